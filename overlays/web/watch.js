// The viewer's page: plays the room (WHEP, or the websocket's offer action with ?via=ws; live HLS
// with the bundled hls.js when WebRTC is refused or cannot connect), shows the
// pinned product tags over the picture, flash sales with their live counters, the shop, the cart
// with its hold countdown, checkout and chat.
'use strict';

(() => {
  const {settings, params, $, el, toast, errorText, money, clock, serverNow, RoomState} = LC;
  const room = settings.room;
  const video = $('#video');
  const tagLayer = $('#tags');
  let channel = null;

  $('#room-title').textContent = room.title;
  document.title = `${room.title} · livecart`;

  const state = new RoomState(render);

  // ---- token: ?token=, else a guest token kept per room so a reload keeps the same cart ------
  const storeKey = `livecart.guest.${room.id}`;
  const tokenExp = (token) => {
    try {
      const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(payload)).exp || 0;
    } catch (e) { return 0; }
  };
  async function guestToken(fresh) {
    const kept = !fresh && localStorage.getItem(storeKey);
    if (kept && tokenExp(kept) - Date.now() / 1000 > 300) return kept;
    const response = await fetch(`/api/rooms/${encodeURIComponent(room.id)}/guest`, {method: 'POST'});
    const body = await response.json();
    if (!response.ok) throw body.error || {message: 'no guest access'};
    localStorage.setItem(storeKey, body.token);
    return body.token;
  }

  // ---- rendering ----------------------------------------------------------------------------
  function render(what) {
    if (what === 'chat') return LC.renderChat($('#chat-log'), state.chat, state.you && state.you.sub);
    renderRoom();
    if (what === 'room') return;
    if (what === 'all') LC.renderChat($('#chat-log'), state.chat, state.you && state.you.sub);
    renderCart();
    if (what === 'cart' || what === 'order' || what === 'totals') return;
    LC.renderTags(tagLayer, state, {onTag: (tag, product, sale) => tap(product, sale)});
    renderSales();
    renderProducts();
  }

  function renderRoom() {
    LC.renderLive(state);
    updateStageMessage();
  }

  let playing = false;
  function updateStageMessage() {
    const msg = $('#stage-msg');
    const audible = hls || (video.srcObject && video.srcObject.getAudioTracks().length);
    $('#unmute').hidden = !(state.live && playing && audible && video.muted);
    if (state.live && playing) { msg.hidden = true; return; }
    msg.hidden = false;
    msg.textContent = state.live ? 'Loading the stream…' : 'The stream is offline — it starts when the host goes live.';
  }
  video.addEventListener('playing', () => { playing = true; updateStageMessage(); });
  video.addEventListener('emptied', () => { playing = false; updateStageMessage(); });

  function renderSales() {
    const box = $('#sales');
    box.replaceChildren(...state.activeSales().map((sale) => {
      const product = state.products.get(sale.product_id) || {id: sale.product_id, title: sale.product_id};
      const phase = RoomState.phase(sale);
      const left = Math.max(0, sale.remaining);
      const button = el('button.primary.grab', {
        type: 'button', disabled: phase !== 'live', onclick: () => tap(product, sale),
      }, phase === 'live' ? 'Grab it' : phase === 'sold_out' ? 'Sold out' : 'Starting soon');
      return el('div.sale-card.' + phase, {dataset: {sale: sale.id}},
        LC.productImage(product, 'sale-thumb'),
        el('div.sale-body', {},
          el('div.sale-head', {}, el('span.badge.flash', {}, 'Flash sale'),
            el('span.countdown', {dataset: {until: phase === 'scheduled' ? sale.starts_at : sale.ends_at,
              prefix: phase === 'scheduled' ? 'starts in ' : 'ends in '}})),
          el('div.sale-title', {}, product.title),
          el('div.sale-price', {}, el('b', {}, money(sale.price, sale.currency)),
            product.price > sale.price ? el('s', {}, money(product.price, product.currency)) : null),
          el('div.meter', {}, el('div', {style: `width:${(100 * left) / sale.quantity}%`})),
          el('div.sale-left', {}, el('b.sale-remaining', {}, String(left)), ` of ${sale.quantity} left`,
            sale.per_user_limit ? ` · limit ${sale.per_user_limit} per person` : '')),
        button);
    }));
    LC.tickCountdowns();
  }

  function renderProducts() {
    const box = $('#products');
    if (!state.products.size) {
      box.replaceChildren(el('p.empty', {}, 'No products yet — the host will add them during the show.'));
      return;
    }
    box.replaceChildren(...[...state.products.values()].map((product) => {
      const sale = state.saleFor(product.id);
      const onSale = sale && RoomState.phase(sale) === 'live';
      const left = onSale ? sale.remaining : product.available;
      return el('div.product', {dataset: {product: product.id}},
        LC.productImage(product),
        el('div.product-body', {},
          el('div.product-title', {}, product.title),
          product.description ? el('div.product-desc', {}, product.description) : null,
          el('div.product-price', {},
            el('b', {}, money(onSale ? sale.price : product.price, product.currency)),
            onSale ? el('s', {}, money(product.price, product.currency)) : null,
            el('span.muted', {}, left > 0 ? ` · ${left} left` : ' · sold out'))),
        el('button.add', {type: 'button', disabled: left <= 0, onclick: () => tap(product, onSale ? sale : null)},
          left > 0 ? 'Add' : 'Sold out'));
    }));
  }

  function renderCart() {
    const cart = state.cart;
    $('#cart-count').textContent = cart.quantity;
    $('#cart-tab-count').textContent = cart.quantity;
    $('#cart-total').textContent = cart.lines.length ? money(cart.total, cart.currency) : '—';
    $('#checkout').disabled = !cart.lines.length;
    const box = $('#cart-lines');
    if (!cart.lines.length) {
      box.replaceChildren(el('p.empty', {}, 'Your cart is empty. Tap a product on the video to add it.'));
      return;
    }
    box.replaceChildren(...cart.lines.map((line) => el('div.cart-line', {dataset: {reservation: line.reservation}},
      el('div.cart-line-body', {},
        el('div.product-title', {}, line.title, line.sale ? el('span.badge.flash', {}, 'Flash') : null),
        el('div.muted.unit', {}, `${line.quantity} × `, el('span.unit-price', {}, money(line.unit_amount, line.currency)),
          priceHeld(line)),
        el('div.hold', {}, 'held for ', el('span.countdown', {dataset: {until: line.expires_at, expired: 'releasing…'}}))),
      el('b.amount', {}, money(line.amount, line.currency)),
      el('button.remove', {type: 'button', 'aria-label': `Remove ${line.title}`, onclick: () => uncart(line)}, 'Remove'))));
    LC.tickCountdowns();
  }
  /** The unit price was locked at the tap: say so when the shop's price has moved since. */
  function priceHeld(line) {
    const item = line.sale ? state.sales.get(line.sale) : state.products.get(line.product);
    if (!item || item.price === line.unit_amount) return null;
    return el('span.price-held', {}, ` · price held, now ${money(item.price, line.currency)}`);
  }
  LC.everySecond(state, render);

  // ---- actions ------------------------------------------------------------------------------
  async function tap(product, sale) {
    try {
      const ack = await channel.request('tap', sale ? {sale_id: sale.id, qty: 1} : {product_id: product.id, qty: 1});
      const line = state.tapped(ack.reservation, ack.cart);
      toast(line ? `Added ${product.title} — held for ${clock(line.expires_at - serverNow())}` : `Added ${product.title}`, 'ok');
      const button = $('#cart-button');
      button.classList.remove('bump');
      void button.offsetWidth;
      button.classList.add('bump');
    } catch (err) { toast(errorText(err), 'error'); }
  }

  async function uncart(line) {
    try {
      const ack = await channel.request('uncart', {reservation: line.reservation});
      state.setCart(ack.cart);
    } catch (err) { toast(errorText(err), 'error'); }
  }

  $('#checkout').addEventListener('click', async () => {
    const button = $('#checkout');
    button.disabled = true;
    button.textContent = 'Placing order…';
    try {
      const ack = await channel.request('checkout', {});
      state.cart = {lines: [], quantity: 0, total: 0, currency: null};
      renderCart();
      showOrder(ack.order);
    } catch (err) { toast(errorText(err), 'error'); } finally {
      button.textContent = 'Check out';
      button.disabled = !state.cart.lines.length;
    }
  });

  let shownOrder = null;
  function showOrder(order) {
    shownOrder = order.id;
    $('#order-id').textContent = order.id;
    const status = $('#order-status');
    status.textContent = order.status === 'paid' ? 'Paid' : order.status === 'cancelled' ? 'Cancelled' : 'Awaiting payment';
    status.className = 'pill ' + order.status;
    $('#order-lines').replaceChildren(...order.lines.map((line) => el('div.order-line', {},
      el('span', {}, `${line.quantity} × ${line.title}`), el('b', {}, money(line.amount, order.currency)))));
    $('#order-total').textContent = money(order.total, order.currency);
    const dialog = $('#order-dialog');
    if (!dialog.open) dialog.showModal();
  }

  function onDirect(msg) {
    if (msg.type === 'error') { toast(errorText(msg), 'error'); return; }
    if (msg.type === 'media.renegotiate') { startMedia(); return; }
    if (!state.direct(msg)) return;
    if (msg.type === 'cart.expired') toast('An item’s hold ran out and it went back on sale.', 'info');
    if (msg.type.startsWith('order.') && (msg.id === shownOrder || msg.type === 'order.placed')) showOrder(msg);
  }

  // ---- tabs and bits --------------------------------------------------------------------------
  function showTab(name) {
    for (const button of document.querySelectorAll('.tabs button')) {
      button.classList.toggle('active', button.dataset.tab === name);
    }
    for (const tab of document.querySelectorAll('.tab')) tab.hidden = tab.id !== `tab-${name}`;
    if (name === 'chat') $('#chat-log').scrollTop = $('#chat-log').scrollHeight;
  }
  for (const button of document.querySelectorAll('.tabs button')) {
    button.addEventListener('click', () => showTab(button.dataset.tab));
  }
  $('#cart-button').addEventListener('click', () => {
    showTab('cart');
    $('.panel').scrollIntoView({behavior: 'smooth', block: 'start'});
  });
  $('#unmute').addEventListener('click', () => {
    video.muted = false;
    $('#unmute').hidden = true;
  });
  LC.trackPicture(video, tagLayer);

  function connStatus(status, detail) {
    const conn = $('#conn');
    conn.textContent = {open: '', connecting: 'connecting…', reconnecting: 'reconnecting…', refused: detail}[status] || '';
    conn.className = 'conn ' + status;
  }

  // ---- media --------------------------------------------------------------------------------
  const viaChannel = params.get('via') === 'ws';
  let media = null;
  let mediaRetry = 0;
  let whepToken = null;  // the viewer token, so the room counts this page's WHEP session and websocket once

  function onStream(stream) {
    if (hls) return;  // a late WebRTC session: the page plays HLS now
    if (video.srcObject !== stream) video.srcObject = stream;
    updateStageMessage();
  }

  let mediaRound = 0;  // only the latest start keeps its session
  let starting = false;
  async function startMedia() {
    clearTimeout(mediaRetry);
    const round = ++mediaRound;
    media?.end();
    media = null;
    starting = true;
    try {
      const started = viaChannel ? await LC.playOverChannel(room.id, channel, onStream)
        : await LC.playWhep(room.id, onStream, whepToken);
      if (round !== mediaRound) { started.end(); return; }
      media = started;
      showMode('webrtc');
      const pc = media.pc;
      let connected = false;
      const deadline = setTimeout(() => {
        if (!connected && media && media.pc === pc) playHls('WebRTC did not connect');
      }, CONNECT_MS);
      pc.addEventListener('connectionstatechange', () => {
        if (pc.connectionState === 'connected') { connected = true; clearTimeout(deadline); }
        if (pc.connectionState !== 'failed' || !media || media.pc !== pc) return;
        clearTimeout(deadline);
        if (connected) retryMedia(); else playHls('WebRTC failed to connect');
      });
    } catch (err) {
      if (round !== mediaRound) return;
      if (err && (err.code === 'overloaded' || err.code === 'http_503')) playHls(`WebRTC refused: ${errorText(err)}`);
      else retryMedia(err);
    } finally {
      if (round === mediaRound) starting = false;
    }
  }
  function retryMedia(err) {
    if (err) console.warn('playback failed', err);
    if (err && (err.code === 'unauthorized' || err.code === 'token_expired')) whepToken = null;
    mediaRetry = setTimeout(startMedia, 3000);
  }

  // ---- live HLS: when WebRTC is refused (room or node full) or cannot connect ---------------
  const CONNECT_MS = 15000;
  let hls = null;  // the hls.js player, once the page plays HLS (it stays on HLS until reloaded)
  function showMode(mode, reason) {
    const pill = $('#mode');
    pill.hidden = false;
    pill.dataset.mode = mode;
    pill.textContent = mode === 'hls' ? 'HLS' : 'WebRTC';
    pill.title = mode === 'hls' ? `playing over HTTP (HLS): ${reason}; a few seconds behind` : 'playing over WebRTC';
  }
  function loadHlsJs() {
    if (window.Hls) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = '/web/vendor/hls.min.js';
      script.onload = resolve;
      script.onerror = () => reject(new Error('hls.js did not load'));
      document.head.append(script);
    });
  }
  async function playHls(reason) {
    if (hls) return;
    console.info('playing HLS:', reason);
    clearTimeout(mediaRetry);
    ++mediaRound;
    media?.end();
    media = null;
    hls = true;  // taken: a second reason to fall back does nothing
    showMode('hls', reason);
    video.srcObject = null;
    const url = `/hls/${encodeURIComponent(room.id)}/index.m3u8`;
    try {
      await loadHlsJs();
    } catch (err) {
      console.warn(err);
    }
    if (!window.Hls || !Hls.isSupported()) {  // Safari plays HLS itself
      video.src = url;
      return;
    }
    const start = () => {
      const player = new Hls({lowLatencyMode: true, backBufferLength: 30});
      player.on(Hls.Events.ERROR, (event, data) => {
        if (!data.fatal) return;
        if (data.type === Hls.ErrorTypes.MEDIA_ERROR) { player.recoverMediaError(); return; }
        player.destroy();  // offline, or the node restarted: try again shortly
        setTimeout(() => { if (hls === player) hls = start(); }, 3000);
      });
      player.loadSource(url);
      player.attachMedia(video);
      return player;
    };
    hls = start();
  }

  /**
   * The room went live: play it again when this page's session cannot show it — none, ended, or
   * negotiated for another codec than the publisher's (a new publisher, another browser).
   */
  function onMediaEvent(msg) {
    if (msg.type !== 'media.online' && msg.type !== 'media.status') return;
    if (!state.live || starting || hls) return;
    const connection = media && media.pc.connectionState;
    if (!media || connection === 'failed' || connection === 'closed' || !LC.codecsFit(media.codecs, state.codecs)) {
      startMedia();
    }
  }

  /** After the websocket came back (the server may have restarted): play again if the session is gone. */
  async function checkMedia() {
    if (hls) return;  // hls.js retries by itself
    if (viaChannel) { startMedia(); return; }  // the websocket's peer connection ends with its socket
    const current = media;
    if (!current) return;
    const alive = await current.alive();
    if (alive === false && media === current) startMedia();
  }

  // ---- start --------------------------------------------------------------------------------
  async function main() {
    let token = params.get('token');
    const guest = !token;
    try {
      if (guest) token = await guestToken(false);
    } catch (err) {
      connStatus('refused', errorText(err));
      return;
    }
    let retriedGuest = false;
    let joined = false;
    channel = new LC.Channel(token, {
      snapshot: (msg) => {
        state.snapshot(msg);
        if (viaChannel && !joined) startMedia();
        else if (joined) onMediaEvent({type: 'media.status'});
        joined = true;
        retriedGuest = false;
      },
      event: (msg) => { state.apply(msg); onMediaEvent(msg); },
      direct: onDirect,
      status: async (status, detail) => {
        if (status === 'refused' && guest && !retriedGuest) {
          // A kept guest token may have been signed by an earlier server secret: get a new one once.
          retriedGuest = true;
          channel.token = whepToken = await guestToken(true);
          channel.connect();
          return;
        }
        if (status === 'open' && joined) {
          // Cart updates go to the user's open connections only: ask for the cart a drop may have missed.
          channel.request('cart').then((ack) => state.setCart(ack.cart), () => {});
          checkMedia();
        }
        connStatus(status, detail);
      },
    });
    whepToken = token;
    channel.connect();
    LC.chatForm($('#chat-form'), channel);
    if (!viaChannel) startMedia();
  }

  renderRoom();
  renderCart();
  renderProducts();
  main();
})();
