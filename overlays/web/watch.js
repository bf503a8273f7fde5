// The viewer's page: plays the room (WHEP, or the websocket's offer action with ?via=ws; live HLS
// with the bundled hls.js when WebRTC is refused or cannot connect, or the room is HLS-only), shows the
// pinned product tags over the picture, flash sales with their live counters, the shop, the cart
// with its hold countdown, checkout and chat.
'use strict';

(() => {
  const {settings, params, $, el, errorText, money, RoomState} = LC;
  const room = settings.room;
  const video = $('#video');
  const tagLayer = $('#tags');
  let channel = null;

  $('#room-title').textContent = room.title;
  document.title = `${room.title} · livecart`;

  const state = new RoomState(render);
  const shopper = new LC.Shopper(state, async () => channel);
  const tap = (product, sale) => shopper.tap(product, sale);

  // ---- rendering ----------------------------------------------------------------------------
  function render(what) {
    if (what === 'chat') return LC.renderChat($('#chat-log'), state.chat, state.you && state.you.sub);
    renderRoom();
    if (what === 'room') return;
    if (what === 'all') LC.renderChat($('#chat-log'), state.chat, state.you && state.you.sub);
    shopper.renderCart();
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
    if (state.live) { msg.textContent = 'Loading the stream…'; return; }
    msg.replaceChildren('The stream is offline — it starts when the host goes live.');
    if (replay) {
      msg.append(el('a.button.primary.replay-link', {href: new URL(replay.links.replay).pathname},
        `Watch the replay of ${LC.when(replay.started_at)}`));
    }
  }

  // ---- offline: the newest replay ---------------------------------------------------------------
  const REPLAY_CHECK_MS = 15000;
  let replay = null;
  async function findReplay() {
    if (state.live) return;
    try {
      const response = await fetch(`/api/rooms/${encodeURIComponent(room.id)}/recordings`, {cache: 'no-store'});
      if (!response.ok) return;
      const {recordings} = await response.json();
      const newest = recordings.find((r) => r.duration > 0 && r.state !== 'failed') || null;
      if ((newest && newest.id) !== (replay && replay.id)) {
        replay = newest;
        updateStageMessage();
      }
    } catch (e) { /* the next check tries again */ }
  }
  setInterval(() => { if (!document.hidden) findReplay(); }, REPLAY_CHECK_MS);
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

  LC.everySecond(state, render);

  function onDirect(msg) {
    if (msg.type === 'media.renegotiate') { startMedia(); return; }
    shopper.direct(msg);
  }

  // ---- tabs and bits --------------------------------------------------------------------------
  LC.panelTabs();
  $('.tabs button[data-tab=chat]').addEventListener('click', () => {
    $('#chat-log').scrollTop = $('#chat-log').scrollHeight;
  });
  $('#unmute').addEventListener('click', () => {
    video.muted = false;
    $('#unmute').hidden = true;
  });
  LC.trackPicture(video, tagLayer);

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
    if (hls) return;  // the page plays HLS now (until reloaded)
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
      if (err && ['overloaded', 'hls_only', 'http_503'].includes(err.code)) playHls(`WebRTC refused: ${errorText(err)}`);
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

  // ---- live HLS: when WebRTC is refused (room or node full, HLS-only room) or cannot connect ---
  const CONNECT_MS = 15000;
  let hls = null;  // the hls.js player, once the page plays HLS (it stays on HLS until reloaded)
  function showMode(mode, reason) {
    const pill = $('#mode');
    pill.hidden = false;
    pill.dataset.mode = mode;
    pill.textContent = mode === 'hls' ? 'HLS' : 'WebRTC';
    pill.title = mode === 'hls' ? `playing over HTTP (HLS): ${reason}; a few seconds behind` : 'playing over WebRTC';
    pill.dataset.reason = reason || '';
    delete pill.dataset.latency;
  }
  /** How far behind live the HLS picture is (hls.js maps the playhead through EXT-X-PROGRAM-DATE-TIME). */
  function showLatency() {
    const date = hls && hls.playingDate;
    if (!date || video.paused) return;
    const pill = $('#mode');
    const seconds = (Date.now() - date.getTime()) / 1000;
    pill.dataset.latency = seconds.toFixed(2);
    pill.title = `playing over HTTP (HLS): ${pill.dataset.reason}; about ${seconds.toFixed(1)} s behind live`;
  }
  setInterval(showLatency, 1000);
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
    // A private room's HLS takes the viewer's token in the query: the playlist names its files with it.
    const token = room.private ? (whepToken || params.get('token')) : null;
    const url = `/hls/${encodeURIComponent(room.id)}/index.m3u8` + (token ? `?token=${encodeURIComponent(token)}` : '');
    try {
      await loadHlsJs();
    } catch (err) {
      console.warn(err);
    }
    if (!window.Hls || !Hls.isSupported()) {  // Safari plays HLS itself
      video.dataset.player = 'native';
      video.src = url;
      return;
    }
    video.dataset.player = 'hls.js';
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
    let joined = false;
    try {
      channel = await LC.viewerChannel(room.id, {
        snapshot: (msg) => {
          state.snapshot(msg);
          if (viaChannel && !joined) startMedia();
          else if (joined) onMediaEvent({type: 'media.status'});
          joined = true;
          findReplay();
        },
        event: (msg) => {
          state.apply(msg);
          onMediaEvent(msg);
          if (msg.type === 'media.offline') findReplay();
        },
        direct: onDirect,
        status: (status, detail) => {
          if (status === 'open' && joined) {
            // Cart updates go to the user's open connections only: ask for the cart a drop may have missed.
            channel.request('cart').then((ack) => state.setCart(ack.cart), () => {});
            checkMedia();
          }
          LC.connStatus(status, detail);
        },
      }, (token) => { whepToken = token; });
    } catch (err) {
      LC.connStatus('refused', errorText(err));
      return;
    }
    channel.connect();
    LC.chatForm($('#chat-form'), channel);
    if (room.hls_only) playHls('the room plays over HLS only');
    else if (!viaChannel) startMedia();
  }

  renderRoom();
  shopper.renderCart();
  renderProducts();
  main();
})();
