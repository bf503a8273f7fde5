// The streamer's page: publishes the camera and microphone over WHIP with the room's stream key, and
// lets the host manage products, pin product tags onto the video (click a spot on the preview), run
// flash sales, read chat and follow the sales totals.
'use strict';

(() => {
  const {settings, params, $, el, toast, errorText, money, RoomState} = LC;
  const room = settings.room;
  const preview = $('#preview');
  const tagLayer = $('#tags');
  let channel = null;
  let pinning = null; // the product whose tag the next click on the picture places

  $('#room-title').textContent = room.title;
  document.title = `Studio · ${room.title} · livecart`;
  $('#watch-link').href = `/watch/${encodeURIComponent(room.id)}`;
  $('#stream-key').value = params.get('key') || '';

  const state = new RoomState(render);

  // ---- rendering ----------------------------------------------------------------------------
  function render(what) {
    if (what === 'chat') return LC.renderChat($('#chat-log'), state.chat, state.you && state.you.sub);
    renderRoom();
    renderTotals();
    if (what === 'room' || what === 'totals') return;
    if (what === 'all') LC.renderChat($('#chat-log'), state.chat, state.you && state.you.sub);
    LC.renderTags(tagLayer, state, {onRemove: unpin});
    renderProducts();
    renderSales();
  }

  function renderRoom() {
    LC.renderLive(state);
  }

  function renderTotals() {
    const totals = state.totals || {};
    $('#stat-orders').textContent = totals.orders || 0;
    $('#stat-units').textContent = totals.units || 0;
    const revenue = Object.entries(totals.revenue || {}).map(([currency, amount]) => money(amount, currency));
    $('#stat-revenue').textContent = revenue.length ? revenue.join(' + ') : '—';
    $('#stat-recent').textContent = (state.recent && state.recent.units) || 0;
    const span = (state.recent && state.recent.window) || 60;
    $('#stat-recent-label').textContent = span === 60 ? 'bought in the last minute' : `bought in the last ${span}s`;
  }

  function renderProducts() {
    const box = $('#products');
    if (!state.products.size) {
      box.replaceChildren(el('p.empty', {}, 'No products yet. Add one, then pin it onto the video or start a flash sale.'));
      return;
    }
    box.replaceChildren(...[...state.products.values()].map((product) => {
      const sale = state.saleFor(product.id);
      const pinned = [...state.tags.values()].some((t) => t.product_id === product.id);
      const form = saleForm(product);
      return el('div.product.host', {dataset: {product: product.id}},
        LC.productImage(product),
        el('div.product-body', {},
          el('div.product-title', {}, product.title, pinned ? el('span.badge', {}, 'Pinned') : null,
            sale ? el('span.badge.flash', {}, RoomState.phase(sale) === 'live' ? 'On sale' : RoomState.phase(sale)) : null),
          el('div.product-price', {}, el('b', {}, money(product.price, product.currency)),
            el('span.muted', {}, ` · ${product.available} of ${product.stock} available`)),
          el('div.actions', {},
            el('button.pin', {type: 'button', onclick: () => startPinning(product)}, pinned ? 'Pin again' : 'Pin on video'),
            el('button.sale', {type: 'button', onclick: () => { form.hidden = !form.hidden; }}, 'Flash sale'),
            el('button', {type: 'button', onclick: () => editProduct(product)}, 'Edit'),
            el('button.danger', {type: 'button', onclick: () => removeProduct(product)}, 'Remove')),
          form));
    }));
  }

  function saleForm(product) {
    const suggested = Math.round(product.price * 0.7) / 10 ** LC.currencyDigits(product.currency);
    const form = el('form.sale-form', {hidden: true, autocomplete: 'off'},
      el('div.row', {},
        el('label.field', {}, 'Sale price', el('input', {name: 'price', type: 'number', min: '0', step: 'any',
          required: true, value: suggested})),
        el('label.field.small', {}, 'Units', el('input', {name: 'quantity', type: 'number', min: '1', step: '1',
          required: true, value: Math.max(1, Math.min(product.available || 1, 10))})),
        el('label.field.small', {}, 'Per person', el('input', {name: 'per_user_limit', type: 'number', min: '1',
          step: '1', required: true, value: 1})),
        el('label.field.small', {}, 'Minutes', el('input', {name: 'minutes', type: 'number', min: '0.1', step: 'any',
          required: true, value: 5}))),
      el('button.primary.wide', {type: 'submit'}, 'Start flash sale'));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const f = form.elements;
      const sale = {product_id: product.id, price: LC.toMinor(f.price.value, product.currency),
        quantity: Number(f.quantity.value), per_user_limit: Number(f.per_user_limit.value),
        duration: Math.round(Number(f.minutes.value) * 60)};
      try {
        await channel.request('sale.start', {sale});
        toast(`Flash sale on ${product.title} is live`, 'ok');
        showTab('sales');
      } catch (err) { toast(errorText(err), 'error'); }
    });
    return form;
  }

  function renderSales() {
    const sales = [...state.sales.values()].sort((a, b) => b.starts_at - a.starts_at);
    const active = sales.filter((s) => RoomState.phase(s) !== 'ended');
    $('#sales-count').textContent = active.length;
    $('#sales-count').hidden = !active.length;
    const box = $('#sales');
    if (!sales.length) {
      box.replaceChildren(el('p.empty', {}, 'No flash sales yet. Start one from a product’s “Flash sale” button.'));
      return;
    }
    box.replaceChildren(...sales.slice(0, 12).map((sale) => {
      const product = state.products.get(sale.product_id) || {id: sale.product_id, title: sale.product_id};
      const phase = RoomState.phase(sale);
      const left = Math.max(0, sale.remaining);
      return el('div.sale-card.' + phase, {dataset: {sale: sale.id}},
        LC.productImage(product, 'sale-thumb'),
        el('div.sale-body', {},
          el('div.sale-head', {}, el('span.badge.flash', {}, phase.replace('_', ' ')),
            phase === 'ended' ? null : el('span.countdown', {dataset: {
              until: phase === 'scheduled' ? sale.starts_at : sale.ends_at,
              prefix: phase === 'scheduled' ? 'starts in ' : 'ends in '}})),
          el('div.sale-title', {}, product.title, ' · ', money(sale.price, sale.currency)),
          el('div.meter', {}, el('div', {style: `width:${(100 * left) / sale.quantity}%`})),
          el('div.sale-left', {}, el('b.sale-remaining', {}, String(left)), ` of ${sale.quantity} left · `,
            `${sale.quantity - left} taken`)),
        phase === 'ended' ? null
          : el('button.danger.end-sale', {type: 'button', onclick: () => endSale(sale)}, 'End'));
    }));
    LC.tickCountdowns();
  }
  LC.everySecond(state, render);

  // ---- host actions -------------------------------------------------------------------------
  const slug = (text) => text.toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '')
    .slice(0, 40) || 'item';

  $('#product-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = e.target.elements;
    const currency = f.currency.value.trim().toUpperCase();
    const product = {
      id: f.id.value || `${slug(f.title.value)}-${Math.random().toString(36).slice(2, 6)}`,
      title: f.title.value.trim(), description: f.description.value.trim(), image_url: f.image_url.value.trim(),
      price: LC.toMinor(f.price.value, currency), currency, stock: Number(f.stock.value),
    };
    try {
      await channel.request('product.put', {product});
      toast(`Saved ${product.title}`, 'ok');
      e.target.reset();
      f.id.value = '';
      f.currency.value = currency;
      $('#product-editor').open = false;
    } catch (err) { toast(errorText(err), 'error'); }
  });

  function editProduct(product) {
    const f = $('#product-form').elements;
    f.id.value = product.id;
    f.title.value = product.title;
    f.price.value = product.price / 10 ** LC.currencyDigits(product.currency);
    f.currency.value = product.currency;
    f.stock.value = product.stock;
    f.image_url.value = product.image_url || '';
    f.description.value = product.description || '';
    const editor = $('#product-editor');
    editor.open = true;
    editor.scrollIntoView({behavior: 'smooth', block: 'nearest'});
  }

  async function removeProduct(product) {
    if (!window.confirm(`Remove ${product.title} from the shop?`)) return;
    try { await channel.request('product.remove', {product_id: product.id}); } catch (err) { toast(errorText(err), 'error'); }
  }

  async function endSale(sale) {
    try { await channel.request('sale.end', {sale_id: sale.id}); } catch (err) { toast(errorText(err), 'error'); }
  }

  async function unpin(tag) {
    try { await channel.request('unpin', {tag_id: tag.id}); } catch (err) { toast(errorText(err), 'error'); }
  }

  function startPinning(product) {
    pinning = product;
    $('#stage').classList.add('pinning');
    $('#pin-hint-text').textContent = `Click on the video where the tag for “${product.title}” should appear`;
    $('#pin-hint').hidden = false;
    $('#stage').scrollIntoView({behavior: 'smooth', block: 'nearest'});
  }
  function stopPinning() {
    pinning = null;
    $('#stage').classList.remove('pinning');
    $('#pin-hint').hidden = true;
  }
  $('#pin-cancel').addEventListener('click', (e) => { e.stopPropagation(); stopPinning(); });

  // A click on the picture (the tag layer lies exactly over it) places the tag at that normalised spot.
  tagLayer.addEventListener('click', async (e) => {
    if (!pinning || e.target.closest('.tag')) return;
    const rect = tagLayer.getBoundingClientRect();
    const x = Math.min(1, Math.max(0, (e.clientX - rect.left) / rect.width));
    const y = Math.min(1, Math.max(0, (e.clientY - rect.top) / rect.height));
    const product = pinning;
    stopPinning();
    const tag = {id: LC.newId('tag').slice(0, 64), product_id: product.id, x: +x.toFixed(4), y: +y.toFixed(4)};
    try { await channel.request('pin', {tag}); } catch (err) { toast(errorText(err), 'error'); }
  });

  // ---- camera and WHIP ----------------------------------------------------------------------
  let camera = null;
  let session = null;

  async function startCamera() {
    if (camera) return camera;
    camera = await navigator.mediaDevices.getUserMedia({
      video: {width: {ideal: 1280}, height: {ideal: 720}}, audio: true,
    });
    preview.srcObject = camera;
    $('#stage-msg').hidden = true;
    $('#camera').textContent = 'Camera on';
    $('#camera').disabled = true;
    return camera;
  }

  function publishStatus(text, kind = '') {
    const node = $('#publish-status');
    node.textContent = text;
    node.className = kind || 'muted';
  }

  const PUBLISH_ERRORS = {
    unauthorized: 'The stream key is wrong for this room.',
    conflict: 'Someone is already broadcasting in this room.',
  };

  const REFUSALS = new Set(['unauthorized', 'conflict', 'not_found', 'unsupported_codec', 'unsupported_media']);

  // While the host wants to be live, a lost session (server restart, failed connection) is
  // published again by itself, with a growing pause while the server cannot be reached.
  let wantLive = false;
  let republishTimer = 0;
  let republishDelay = 1000;

  async function goLive(again = false) {
    const key = $('#stream-key').value.trim();
    if (!key) {
      publishStatus('Enter the room’s stream key first.', 'error');
      $('#stream-key').focus();
      return;
    }
    const button = $('#go-live');
    button.disabled = true;
    publishStatus(again ? 'Reconnecting the stream…' : 'Connecting…');
    wantLive = true;
    try {
      await startCamera();
      session = await LC.publish(room.id, key, camera);
      const pc = session.pc;
      pc.addEventListener('connectionstatechange', () => {
        if (!session || session.pc !== pc) return;
        publishState(pc.connectionState);
        if (pc.connectionState === 'failed') republish();
      });
      publishState(pc.connectionState);
      republishDelay = 1000;
      button.textContent = 'End stream';
      button.classList.replace('primary', 'on-air');
    } catch (err) {
      session = null;
      const message = err && err.name === 'NotAllowedError' ? 'Camera or microphone access was refused.'
        : PUBLISH_ERRORS[err && err.code] || errorText(err);
      publishStatus(message, 'error');
      // A refusal (wrong key, someone else live) is final; an unreachable server is tried again.
      if (again && REFUSALS.has(err && err.code)) stopWanting();
      else if (again) republish();
      else wantLive = false;
    } finally {
      button.disabled = false;
    }
  }

  function republish() {
    if (!wantLive) return;
    session?.end();
    session = null;
    clearTimeout(republishTimer);
    republishTimer = setTimeout(() => { if (wantLive && !session) goLive(true); }, republishDelay);
    republishDelay = Math.min(republishDelay * 2, 10000);
  }

  /** The websocket came back (maybe from a restarted server): publish again if the session is gone. */
  async function checkSession() {
    const current = session;
    if (!wantLive || !current) return;
    if (await current.alive() === false && session === current) republish();
  }

  function stopWanting() {
    wantLive = false;
    clearTimeout(republishTimer);
    const button = $('#go-live');
    button.textContent = 'Go live';
    button.classList.replace('on-air', 'primary');
  }

  function publishState(connection) {
    if (connection === 'connected') publishStatus('You are live.', 'ok');
    else if (connection === 'failed') publishStatus('The connection failed — reconnecting…', 'error');
    else if (connection === 'disconnected') publishStatus('Connection unstable…', 'error');
    else publishStatus('Connecting…');
  }

  function endStream() {
    wantLive = false;
    clearTimeout(republishTimer);
    session?.end();
    session = null;
    const button = $('#go-live');
    button.textContent = 'Go live';
    button.classList.replace('on-air', 'primary');
    publishStatus('Stream ended.');
  }

  $('#go-live').addEventListener('click', () => (session || wantLive ? endStream() : goLive()));
  $('#camera').addEventListener('click', async () => {
    try { await startCamera(); } catch (err) { publishStatus('Camera or microphone access was refused.', 'error'); }
  });

  // ---- tabs, sign-in, start -------------------------------------------------------------------
  const showTab = LC.panelTabs();
  LC.trackPicture(preview, tagLayer);

  function connStatus(status, detail) {
    LC.connStatus(status, detail);
    if (status === 'refused') signedIn(false);
  }

  function join(token) {
    channel?.close();
    let joined = false;
    channel = new LC.Channel(token, {
      snapshot: (msg) => {
        if (msg.you.role !== 'host') toast('This token is a viewer’s: products and sales need a host token.', 'error');
        signedIn(msg.you.role === 'host');
        state.snapshot(msg);
      },
      event: (msg) => state.apply(msg),
      direct: (msg) => { if (msg.type === 'error') toast(errorText(msg), 'error'); },
      status: (status, detail) => {
        if (status === 'open' && joined) checkSession();
        if (status === 'open') joined = true;
        connStatus(status, detail);
      },
    });
    channel.connect();
  }

  /** Without a host token only the sign-in form shows in the panel. */
  function signedIn(yes) {
    $('#signin').hidden = yes;
    document.body.classList.toggle('signed-out', !yes);
  }

  $('#signin').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('#host-token').value.trim();
    if (token) join(token);
  });
  LC.chatForm($('#chat-form'), {request: (...args) => channel.request(...args)});

  render('all');
  if (params.get('token')) join(params.get('token'));
  else signedIn(false);
})();
