// Shared by the lobby, studio, watch and replay pages: settings, the room channel (websocket with
// resume), a shopper's cart and checkout, WebRTC over WHIP/WHEP, money and time formatting, small
// DOM helpers.
'use strict';

const LC = (() => {
  const settings = JSON.parse(document.getElementById('livecart-config').textContent);

  // ---- DOM ------------------------------------------------------------------------------
  const $ = (sel, root = document) => root.querySelector(sel);

  /** el('div.card', {onclick}, child, 'text') — a tiny element builder (text is never parsed as HTML). */
  function el(spec, attrs = {}, ...children) {
    const [tag, ...classes] = spec.split('.');
    const node = document.createElement(tag || 'div');
    if (classes.length) node.className = classes.join(' ');
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k === 'style') node.style.cssText = v;
      else node.setAttribute(k, v === true ? '' : v);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  let toastTimer = 0;
  function toast(text, kind = 'info') {
    let box = $('#toast');
    if (!box) document.body.append(box = el('div#toast'));
    box.id = 'toast';
    box.className = 'toast ' + kind;
    box.textContent = text;
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, kind === 'error' ? 4500 : 2800);
  }

  const ERRORS = {
    sold_out: 'Sold out — every unit is taken.',
    limit_reached: 'You already have the most this sale allows.',
    sale_not_live: 'This sale is not live right now.',
    rate_limited: 'Easy there — try again in a moment.',
    cart_empty: 'Your cart is empty.',
    unauthorized: 'Your access has expired: reload the page.',
    token_expired: 'Your access has expired: reload the page.',
    forbidden: 'You are not allowed to do that here.',
    not_found: 'That item is no longer available.',
    disconnected: 'Connection lost — reconnecting, try again in a moment.',
    timeout: 'No answer from the server — try again.',
  };
  const errorText = (err) => ERRORS[err && err.code] || (err && err.message) || String(err);

  // ---- ids, money, time -------------------------------------------------------------------
  let counter = 0;
  /** A fresh request id (taps and checkouts are idempotent on it); works outside secure contexts. */
  function newId(prefix = 'r') {
    counter += 1;
    const rand = Math.random().toString(36).slice(2, 10);
    return `${prefix}-${Date.now().toString(36)}-${counter}-${rand}`;
  }

  const digitsCache = {};
  /** Minor-unit exponent of a currency (EUR 2, JPY 0), from the browser's own currency data. */
  function currencyDigits(currency) {
    if (!(currency in digitsCache)) {
      try {
        digitsCache[currency] = new Intl.NumberFormat('en', {style: 'currency', currency})
          .resolvedOptions().maximumFractionDigits;
      } catch (e) { digitsCache[currency] = 2; }
    }
    return digitsCache[currency];
  }
  function money(minor, currency) {
    if (minor === undefined || minor === null || !currency) return '';
    const value = minor / 10 ** currencyDigits(currency);
    try { return new Intl.NumberFormat(undefined, {style: 'currency', currency}).format(value); }
    catch (e) { return `${value.toFixed(currencyDigits(currency))} ${currency}`; }
  }
  const toMinor = (major, currency) => Math.round(Number(major) * 10 ** currencyDigits(currency));

  // The server's clock, estimated from event timestamps: sale ends and cart expiries are server times.
  let skewMs = 0;
  const serverNow = () => (Date.now() + skewMs) / 1000;
  function noteServerTime(tsMs) {
    if (typeof tsMs === 'number') skewMs = tsMs - Date.now();
  }
  /** "4:07" or "1:02:03" for a number of seconds (never negative). */
  function clock(seconds) {
    const s = Math.max(0, Math.ceil(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const mm = h ? String(m).padStart(2, '0') : String(m);
    return (h ? `${h}:` : '') + `${mm}:${String(r).padStart(2, '0')}`;
  }

  // ---- the room channel -------------------------------------------------------------------
  const CLOSE_UNAUTHORIZED = 4401, CLOSE_NOT_FOUND = 4404, CLOSE_BAD_REQUEST = 4400;

  /**
   * One websocket to the room, kept open: on a drop it reconnects with `since` = the last seq seen
   * (the server replays what was missed, or sends a fresh snapshot), with backoff. Events already
   * seen (seq <= last) are skipped, so a replay never applies anything twice.
   * handlers: snapshot(msg), event(msg), direct(msg), status(state, detail).
   */
  class Channel {
    constructor(token, handlers, wsUrl = settings.ws) {
      this.token = token;
      this.handlers = handlers;
      this.wsUrl = wsUrl;
      this.lastSeq = null;
      this.pending = new Map();
      this.backoff = 500;
      this.closed = false;
      this.ws = null;
    }

    connect() {
      let url = `${this.wsUrl}?token=${encodeURIComponent(this.token)}`;
      if (this.lastSeq !== null) url += `&since=${this.lastSeq}`;
      const ws = this.ws = new WebSocket(url);
      this.handlers.status?.('connecting');
      ws.onopen = () => { this.backoff = 500; this.handlers.status?.('open'); };
      ws.onmessage = (e) => this.receive(JSON.parse(e.data));
      ws.onclose = (e) => this.dropped(ws, e);
    }

    receive(msg) {
      if (msg.type === 'snapshot') {
        this.lastSeq = msg.seq;
        this.handlers.snapshot?.(msg);
        return;
      }
      if ((msg.type === 'ack' || msg.type === 'error') && msg.re !== undefined && this.pending.has(msg.re)) {
        const {resolve, reject, timer} = this.pending.get(msg.re);
        this.pending.delete(msg.re);
        clearTimeout(timer);
        if (msg.type === 'ack') resolve(msg); else reject(msg);
        return;
      }
      if (typeof msg.seq === 'number') {
        if (this.lastSeq !== null && msg.seq <= this.lastSeq) return;
        this.lastSeq = msg.seq;
        noteServerTime(msg.ts);
        this.handlers.event?.(msg);
        return;
      }
      this.handlers.direct?.(msg);
    }

    dropped(ws, e) {
      if (ws !== this.ws) return;
      for (const {reject, timer} of this.pending.values()) {
        clearTimeout(timer);
        reject({code: 'disconnected', message: 'connection lost'});
      }
      this.pending.clear();
      if (this.closed) return;
      if (e.code === CLOSE_UNAUTHORIZED || e.code === CLOSE_NOT_FOUND || e.code === CLOSE_BAD_REQUEST) {
        this.handlers.status?.('refused', e.code === CLOSE_NOT_FOUND ? 'This room does not exist.'
          : 'Access refused: the token is invalid or has expired.');
        return;
      }
      this.handlers.status?.('reconnecting');
      // 1012 (server restart) and 4008 (too slow) ask for a prompt resume; anything else backs off.
      const delay = (e.code === 1012 || e.code === 4008) ? 250 + Math.random() * 500 : this.backoff;
      this.backoff = Math.min(this.backoff * 2, 10000);
      setTimeout(() => this.connect(), delay);
    }

    /** Send an action; resolves with its ack, rejects with {code, message}. */
    request(type, body = {}, timeoutMs = 10000) {
      const id = body.id || newId(type);
      return new Promise((resolve, reject) => {
        if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
          reject({code: 'disconnected', message: 'not connected'});
          return;
        }
        const timer = setTimeout(() => {
          this.pending.delete(id);
          reject({code: 'timeout', message: 'no answer'});
        }, timeoutMs);
        this.pending.set(id, {resolve, reject, timer});
        this.ws.send(JSON.stringify({...body, type, id}));
      });
    }

    close() {
      this.closed = true;
      this.ws?.close(1000, 'leaving');
    }
  }

  // ---- WebRTC -----------------------------------------------------------------------------
  /** ICE servers the engine advertises (Link rel="ice-server" on OPTIONS); none by default. */
  async function iceServers(endpoint) {
    try {
      const response = await fetch(endpoint, {method: 'OPTIONS'});
      const links = response.headers.get('Link') || '';
      const servers = [];
      for (const m of links.matchAll(/<([^>]+)>([^,]*)/g)) {
        if (!/rel="?ice-server"?/.test(m[2])) continue;
        const server = {urls: m[1]};
        const user = m[2].match(/username="([^"]*)"/), cred = m[2].match(/credential="([^"]*)"/);
        if (user) server.username = user[1];
        if (cred) server.credential = cred[1];
        servers.push(server);
      }
      return servers;
    } catch (e) {
      return [];
    }
  }

  /** Resolve when ICE gathering is complete (non-trickle offers carry every candidate). */
  function gathered(pc, timeoutMs = 4000) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      const done = () => { if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); } };
      const timer = setTimeout(() => { pc.removeEventListener('icegatheringstatechange', done); resolve(); },
        timeoutMs);
      pc.addEventListener('icegatheringstatechange', done);
    });
  }

  async function httpError(response) {
    try {
      const body = await response.json();
      if (body.error) return body.error;
    } catch (e) { /* not JSON */ }
    return {code: `http_${response.status}`, message: `${response.status} ${response.statusText}`};
  }

  /**
   * A WHIP or WHEP session: POST the complete offer, apply the answer, remember the Location so
   * leaving DELETEs it (also on page unload, with keepalive).
   */
  class MediaSession {
    constructor(pc, location, answer) {
      this.pc = pc;
      this.location = location;
      this.codecs = answeredCodecs(answer);
      this.onUnload = () => this.end(true);
      window.addEventListener('pagehide', this.onUnload);
    }

    static async open(endpoint, pc, bearer) {
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      const headers = {'Content-Type': 'application/sdp'};
      if (bearer) headers.Authorization = `Bearer ${bearer}`;
      const response = await fetch(endpoint, {method: 'POST', headers, body: pc.localDescription.sdp});
      if (response.status !== 201) {
        pc.close();
        throw await httpError(response);
      }
      const resource = new URL(response.headers.get('Location'), new URL(endpoint, window.location.href));
      const answer = await response.text();
      await pc.setRemoteDescription({type: 'answer', sdp: answer});
      return new MediaSession(pc, resource.toString(), answer);
    }

    /** Whether the server still has this session: true, false (it ended), or null (no answer). */
    async alive() {
      if (!this.location) return false;
      try {
        const response = await fetch(this.location, {method: 'PATCH', body: '',
          headers: {'Content-Type': 'application/trickle-ice-sdpfrag'}});
        return response.status === 404 ? false : response.ok ? true : null;
      } catch (e) {
        return null;
      }
    }

    end(unloading = false) {
      window.removeEventListener('pagehide', this.onUnload);
      this.pc.close();
      if (this.location) fetch(this.location, {method: 'DELETE', keepalive: unloading}).catch(() => {});
      this.location = null;
    }
  }

  /** The codec per kind an SDP answer settled on (its first payload type of each m= section). */
  function answeredCodecs(sdp) {
    const codecs = {};
    for (const section of sdp.split(/\r?\nm=/).slice(1)) {
      const kind = section.split(' ')[0];
      const first = section.split(/\r?\n/)[0].split(' ')[3];
      const rtpmap = section.match(new RegExp(`a=rtpmap:${first} ([^/\\s]+)`));
      if (rtpmap) codecs[kind] = rtpmap[1];
    }
    return codecs;
  }

  /** Whether a viewer that negotiated `mine` can play a room relaying `room` (a codec per kind). */
  function codecsFit(mine, room) {
    return Object.entries(room || {}).every(([kind, name]) =>
      !mine[kind] || mine[kind].toLowerCase() === String(name).toLowerCase());
  }

  /** Publish a camera/microphone stream to the room over WHIP with its stream key. */
  async function publish(room, streamKey, stream) {
    const endpoint = `/whip/${encodeURIComponent(room)}`;
    const pc = new RTCPeerConnection({iceServers: await iceServers(endpoint)});
    for (const track of stream.getTracks()) pc.addTransceiver(track, {direction: 'sendonly', streams: [stream]});
    return MediaSession.open(endpoint, pc, streamKey);
  }

  function viewerPeer(servers, onStream) {
    const pc = new RTCPeerConnection({iceServers: servers});
    pc.addTransceiver('video', {direction: 'recvonly'});
    pc.addTransceiver('audio', {direction: 'recvonly'});
    const stream = new MediaStream();
    pc.ontrack = (e) => { stream.addTrack(e.track); onStream(stream); };
    return pc;
  }

  /** Play the room over WHEP; a viewer `token` (Bearer) makes the room count this page once. */
  async function playWhep(room, onStream, token) {
    const endpoint = `/whep/${encodeURIComponent(room)}`;
    return MediaSession.open(endpoint, viewerPeer(await iceServers(endpoint), onStream), token);
  }

  /** Play the room over the websocket's `offer` action; the peer connection ends with the socket. */
  async function playOverChannel(room, channel, onStream) {
    const pc = viewerPeer(await iceServers(`/whep/${encodeURIComponent(room)}`), onStream);
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    let codecs;
    try {
      const ack = await channel.request('offer', {sdp: pc.localDescription.sdp}, 15000);
      await pc.setRemoteDescription({type: 'answer', sdp: ack.sdp});
      codecs = answeredCodecs(ack.sdp);
    } catch (err) {
      pc.close();
      throw err;
    }
    return {pc, codecs, end() { pc.close(); }};
  }

  /** Where the decoded picture lies inside a <video> with object-fit: contain (letterboxing). */
  function pictureRect(video) {
    const w = video.clientWidth, h = video.clientHeight;
    const vw = video.videoWidth, vh = video.videoHeight;
    if (!vw || !vh || !w || !h) return {left: 0, top: 0, width: w, height: h};
    const scale = Math.min(w / vw, h / vh);
    const width = vw * scale, height = vh * scale;
    return {left: (w - width) / 2, top: (h - height) / 2, width, height};
  }

  /** Keep `layer` (absolutely positioned in the video's parent) exactly over the picture. */
  function trackPicture(video, layer) {
    const place = () => {
      const r = pictureRect(video);
      Object.assign(layer.style, {left: `${video.offsetLeft + r.left}px`, top: `${video.offsetTop + r.top}px`,
        width: `${r.width}px`, height: `${r.height}px`});
    };
    new ResizeObserver(place).observe(video);
    video.addEventListener('loadedmetadata', place);
    video.addEventListener('resize', place);
    window.addEventListener('resize', place);
    place();
    return place;
  }

  // ---- the room as the pages see it -------------------------------------------------------
  const META = new Set(['type', 'seq', 'ts', 'key']);
  const strip = (msg) => Object.fromEntries(Object.entries(msg).filter(([k]) => !META.has(k)));
  const CHAT_KEPT = 200;

  /**
   * The room's state built from the snapshot and the events that follow it: products, pinned tags,
   * sales, totals, the viewer's cart, chat, viewer count and whether the stream is live.
   * `onChange(what)` is called after each change with a hint ('shop', 'cart', 'chat', 'room', ...).
   */
  class RoomState {
    constructor(onChange) {
      this.onChange = onChange;
      this.products = new Map();
      this.tags = new Map();
      this.sales = new Map();
      this.totals = {orders: 0, units: 0, revenue: {}};
      this.recent = {window: 60, units: 0};
      this.cart = {lines: [], quantity: 0, total: 0, currency: null};
      this.chat = [];
      this.viewers = 0;
      this.live = false;
      this.codecs = {};
      this.you = null;
    }

    snapshot(msg) {
      this.you = msg.you;
      this.viewers = msg.viewers || 0;
      // A snapshot is the whole room (after a restart too): media is offline unless its state says live.
      this.live = false;
      this.codecs = {};
      this.products = new Map((msg.products || []).map((p) => [p.id, p]));
      this.tags = new Map((msg.tags || []).map((t) => [t.id, t]));
      this.sales = new Map((msg.sales || []).map((s) => [s.id, s]));
      if (msg.totals) this.totals = msg.totals;
      if (msg.recent) this.recent = msg.recent;
      if (msg.cart) this.cart = msg.cart;
      for (const value of Object.values(msg.state || {})) this.apply(value, true);
      this.onChange('all');
    }

    /** One room event (or a snapshot state value when `quiet`). */
    apply(msg, quiet = false) {
      const data = strip(msg);
      let what = 'shop';
      switch (msg.type) {
        case 'chat':
          this.chat.push(data);
          if (this.chat.length > CHAT_KEPT) this.chat.shift();
          what = 'chat';
          break;
        case 'viewers': this.viewers = data.count; what = 'room'; break;
        case 'media.status': this.live = !!data.live; this.codecs = data.codecs || {}; what = 'room'; break;
        case 'media.online': this.live = true; this.codecs = data.codecs || {}; what = 'room'; break;
        case 'media.offline': this.live = false; what = 'room'; break;
        case 'product.put': this.products.set(data.id, data); break;
        case 'product.removed': this.products.delete(data.product); break;
        case 'product.stock': {
          const product = this.products.get(data.product);
          if (product) product.available = data.available;
          break;
        }
        case 'tag.pinned': this.tags.set(data.id, data); break;
        case 'tag.unpinned': this.tags.delete(data.tag); break;
        case 'sale.scheduled': case 'sale.started': case 'sale.ended':
          this.sales.set(data.id, {...this.sales.get(data.id), ...data});
          break;
        case 'sale.sold_out': case 'sale.resumed': case 'sale.remaining': {
          const sale = this.sales.get(data.sale);
          if (sale) sale.remaining = data.remaining;
          break;
        }
        case 'sales.totals': this.totals = data; what = 'totals'; break;
        case 'sales.recent': this.recent = data; what = 'totals'; break;
        default: return;
      }
      if (!quiet) this.onChange(what, msg);
    }

    /** A message for this user only: cart and order updates. Returns true when it was one. */
    direct(msg) {
      const data = strip(msg);
      if (msg.type === 'cart.added') {
        this.cart.lines = this.cart.lines.filter((l) => l.reservation !== data.reservation).concat([data]);
      } else if (msg.type === 'cart.removed' || msg.type === 'cart.expired') {
        this.cart.lines = this.cart.lines.filter((l) => l.reservation !== data.reservation);
      } else if (msg.type.startsWith('order.')) {
        if (msg.type === 'order.placed') this.cart.lines = [];
        this.recount();
        this.onChange('order', msg);
        return true;
      } else {
        return false;
      }
      this.recount();
      this.onChange('cart', msg);
      return true;
    }

    setCart(cart) {
      if (cart) this.cart = cart;
      this.onChange('cart');
    }

    /**
     * A tap's answer: the cart's totals after it (`{quantity, total, currency}`, no lines). The new
     * line itself came just before, as `cart.added`. Returns the line of `reservation` if held.
     */
    tapped(reservation, totals) {
      if (totals) this.cart = {...this.cart, ...totals};
      this.onChange('cart');
      return this.cart.lines.find((l) => l.reservation === reservation) || null;
    }

    recount() {
      const lines = this.cart.lines;
      this.cart = {lines, quantity: lines.reduce((n, l) => n + l.quantity, 0),
        total: lines.reduce((n, l) => n + l.amount, 0), currency: lines.length ? lines[0].currency : null};
    }

    /** scheduled, live, sold_out or ended, from the sale's times, the server clock and what is left. */
    static phase(sale, now = serverNow()) {
      if (sale.ended_at || now >= sale.ends_at) return 'ended';
      if (now < sale.starts_at) return 'scheduled';
      return sale.remaining > 0 ? 'live' : 'sold_out';
    }

    /** The sale a viewer should buy a product through: live first, then sold out, then scheduled. */
    saleFor(productId) {
      const rank = {live: 0, sold_out: 1, scheduled: 2};
      let best = null;
      for (const sale of this.sales.values()) {
        if (sale.product_id !== productId) continue;
        const phase = RoomState.phase(sale);
        if (phase === 'ended') continue;
        if (!best || rank[phase] < rank[RoomState.phase(best)]) best = sale;
      }
      return best;
    }

    activeSales() {
      return [...this.sales.values()].filter((s) => RoomState.phase(s) !== 'ended')
        .sort((a, b) => a.ends_at - b.ends_at);
    }
  }

  /**
   * Draw the pinned tags into `layer` (which lies over the video picture) at their normalised x, y.
   * Each tag shows its label or product title and price (the live sale's price, when there is one).
   * opts: onTag(tag, product, sale) for the tag's button, buttonText, onRemove(tag) for a remove button.
   */
  function renderTags(layer, state, opts = {}) {
    layer.replaceChildren();
    for (const tag of state.tags.values()) {
      const product = state.products.get(tag.product_id);
      if (!product) continue;
      const sale = state.saleFor(product.id);
      const onSale = sale && RoomState.phase(sale) === 'live';
      const soldOut = onSale ? sale.remaining <= 0 : product.available <= 0;
      const side = (tag.x > 0.6 ? ' left' : '') + (tag.y > 0.65 ? ' up' : '');
      const price = onSale
        ? [el('span.now', {}, money(sale.price, sale.currency)), el('s', {}, money(product.price, product.currency))]
        : [el('span.now', {}, money(product.price, product.currency))];
      const button = opts.onTag && el('button.tag-buy', {
        disabled: soldOut, onclick: (e) => { e.stopPropagation(); opts.onTag(tag, product, onSale ? sale : null); },
      }, soldOut ? 'Sold out' : (opts.buttonText || 'Add to cart'));
      const remove = opts.onRemove && el('button.tag-remove', {
        title: 'Unpin', 'aria-label': 'Unpin tag', onclick: (e) => { e.stopPropagation(); opts.onRemove(tag); },
      }, '×');
      layer.append(el('div.tag' + side, {style: `left:${tag.x * 100}%;top:${tag.y * 100}%`,
        dataset: {tag: tag.id, product: product.id}},
      el('span.tag-dot'),
      el('div.tag-card', {}, remove,
        el('div.tag-title', {}, tag.label || product.title),
        el('div.tag-price', {}, price, onSale ? el('span.badge.flash', {}, 'Flash') : null),
        button)));
    }
  }

  /** A product's picture, or a coloured initial when it has none. */
  function productImage(product, cls = 'thumb') {
    if (product.image_url) return el(`img.${cls}`, {src: product.image_url, alt: '', loading: 'lazy'});
    let hue = 0;
    for (const ch of product.id) hue = (hue * 31 + ch.charCodeAt(0)) % 360;
    return el(`div.${cls}.initial`, {style: `background:hsl(${hue} 65% 45%)`}, (product.title || '?')[0].toUpperCase());
  }

  /** The chat log, newest at the bottom, kept scrolled down unless the reader scrolled up. */
  function renderChat(box, lines, me) {
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    box.replaceChildren(...lines.map((line) => el('div.chat-line' + (line.role === 'host' ? '.host' : ''), {},
      el('b', {}, line.role === 'host' ? 'Host' : (line.user === me ? 'You' : shortName(line.user))), ' ',
      el('span', {}, line.text))));
    if (atBottom) box.scrollTop = box.scrollHeight;
  }
  const shortName = (user) => (user ? String(user).slice(0, 14) : 'guest');

  /** Every countdown on the page against the server's clock (`data-expired` is shown at zero). */
  function tickCountdowns() {
    const now = serverNow();
    for (const node of document.querySelectorAll('.countdown[data-until]')) {
      const left = Number(node.dataset.until) - now;
      node.textContent = left > 0 ? (node.dataset.prefix || '') + clock(left) : (node.dataset.expired || 'now');
      node.classList.toggle('urgent', left > 0 && left < 30);
    }
  }

  /** Once a second: the countdowns, and a render of the shop when a sale starts or ends by the
   *  clock (buttons change even before the server's event arrives). */
  function everySecond(state, render) {
    let lastPhases = '';
    setInterval(() => {
      tickCountdowns();
      const phases = [...state.sales.values()].map((s) => RoomState.phase(s)).join();
      if (phases !== lastPhases) { lastPhases = phases; render('shop'); }
    }, 1000);
  }

  /** The live pill and the viewer count, shown alike on both pages. */
  function renderLive(state) {
    const live = $('#live');
    live.textContent = state.live ? 'Live' : 'Offline';
    live.className = 'pill ' + (state.live ? 'live' : 'offline');
    $('#viewers').textContent = `${state.viewers} watching`;
  }

  /** The channel's state in the header's `#conn` (empty while open; the reason when refused). */
  function connStatus(status, detail) {
    const conn = $('#conn');
    conn.textContent = {connecting: 'connecting…', reconnecting: 'reconnecting…', refused: detail}[status] || '';
    conn.className = 'conn ' + status;
  }

  /** Wire a chat form (input + button) to the channel. */
  function chatForm(form, channel) {
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const input = form.querySelector('input');
      const text = input.value.trim();
      if (!text) return;
      try {
        await channel.request('chat', {text});
        input.value = '';
      } catch (err) { toast(errorText(err), 'error'); }
    });
  }

  const params = new URLSearchParams(window.location.search);

  // ---- a viewer in the room: token, channel, cart and checkout ----------------------------
  const tokenExp = (token) => {
    try {
      const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(payload)).exp || 0;
    } catch (e) { return 0; }
  };

  /** A guest viewer token for `room`, kept per room so a reload keeps the same cart (`fresh`: a new one). */
  async function guestToken(room, fresh) {
    const storeKey = `livecart.guest.${room}`;
    const kept = !fresh && localStorage.getItem(storeKey);
    if (kept && tokenExp(kept) - Date.now() / 1000 > 300) return kept;
    const response = await fetch(`/api/rooms/${encodeURIComponent(room)}/guest`, {method: 'POST'});
    const body = await response.json();
    if (!response.ok) throw body.error || {message: 'no guest access'};
    localStorage.setItem(storeKey, body.token);
    return body.token;
  }

  /**
   * The room's channel for a viewer: the page's ?token=, else a guest token. A kept guest token may
   * have been signed by an earlier server secret: when the server refuses it, get a new one once
   * (`onToken(token)` hears of it) and connect again. Rejects when no guest token can be had.
   */
  async function viewerChannel(room, handlers, onToken = () => {}) {
    let token = params.get('token');
    const guest = !token;
    if (guest) token = await guestToken(room, false);
    let retried = false;
    const channel = new Channel(token, {...handlers,
      snapshot: (msg) => { retried = false; handlers.snapshot?.(msg); },
      status: async (status, detail) => {
        if (status === 'refused' && guest && !retried) {
          retried = true;
          channel.token = await guestToken(room, true);
          onToken(channel.token);
          channel.connect();
          return;
        }
        handlers.status?.(status, detail);
      }});
    onToken(token);
    return channel;
  }

  /**
   * A shopper's side of a page: adding to the cart, the cart tab (lines, hold countdowns, totals),
   * checkout and the order dialog, over the room channel `channel()` gives (a promise: a page may
   * open it only when the shopper first buys). `state` is the page's RoomState.
   */
  class Shopper {
    constructor(state, channel) {
      this.state = state;
      this.channel = channel;
      this.shownOrder = null;
      $('#checkout').addEventListener('click', () => this.checkout());
    }

    async request(type, body) {
      return (await this.channel()).request(type, body);
    }

    /** Add one of `product` to the cart: through `sale` when given (its price), else at the product's. */
    async tap(product, sale) {
      try {
        const ack = await this.request('tap', sale ? {sale_id: sale.id, qty: 1} : {product_id: product.id, qty: 1});
        const line = this.state.tapped(ack.reservation, ack.cart);
        toast(line ? `Added ${product.title} — held for ${clock(line.expires_at - serverNow())}` : `Added ${product.title}`, 'ok');
        const button = $('#cart-button');
        button.classList.remove('bump');
        void button.offsetWidth;
        button.classList.add('bump');
        return true;
      } catch (err) {
        toast(errorText(err), 'error');
        return false;
      }
    }

    async uncart(line) {
      try {
        const ack = await this.request('uncart', {reservation: line.reservation});
        this.state.setCart(ack.cart);
      } catch (err) { toast(errorText(err), 'error'); }
    }

    async checkout() {
      const button = $('#checkout');
      button.disabled = true;
      button.textContent = 'Placing order…';
      try {
        const ack = await this.request('checkout', {});
        this.state.cart = {lines: [], quantity: 0, total: 0, currency: null};
        this.renderCart();
        this.showOrder(ack.order);
      } catch (err) { toast(errorText(err), 'error'); } finally {
        button.textContent = 'Check out';
        button.disabled = !this.state.cart.lines.length;
      }
    }

    renderCart() {
      const cart = this.state.cart;
      $('#cart-count').textContent = cart.quantity;
      $('#cart-tab-count').textContent = cart.quantity;
      $('#cart-total').textContent = cart.lines.length ? money(cart.total, cart.currency) : '—';
      $('#checkout').disabled = !cart.lines.length;
      const box = $('#cart-lines');
      if (!cart.lines.length) {
        box.replaceChildren(el('p.empty', {}, box.dataset.empty || 'Your cart is empty.'));
        return;
      }
      box.replaceChildren(...cart.lines.map((line) => el('div.cart-line', {dataset: {reservation: line.reservation}},
        el('div.cart-line-body', {},
          el('div.product-title', {}, line.title, line.sale ? el('span.badge.flash', {}, 'Flash') : null),
          el('div.muted.unit', {}, `${line.quantity} × `, el('span.unit-price', {}, money(line.unit_amount, line.currency)),
            this.priceHeld(line)),
          el('div.hold', {}, 'held for ', el('span.countdown', {dataset: {until: line.expires_at, expired: 'releasing…'}}))),
        el('b.amount', {}, money(line.amount, line.currency)),
        el('button.remove', {type: 'button', 'aria-label': `Remove ${line.title}`, onclick: () => this.uncart(line)},
          'Remove'))));
      tickCountdowns();
    }

    /** The unit price was locked at the tap: say so when the shop's price has moved since. */
    priceHeld(line) {
      const item = line.sale ? this.state.sales.get(line.sale) : this.state.products.get(line.product);
      if (!item || item.price === line.unit_amount) return null;
      return el('span.price-held', {}, ` · price held, now ${money(item.price, line.currency)}`);
    }

    showOrder(order) {
      this.shownOrder = order.id;
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

    /** A message for this user (cart and order updates); false when it was none of those. */
    direct(msg) {
      if (msg.type === 'error') { toast(errorText(msg), 'error'); return true; }
      if (!this.state.direct(msg)) return false;
      if (msg.type === 'cart.expired') toast('An item’s hold ran out and it went back on sale.', 'info');
      if (msg.type.startsWith('order.') && (msg.id === this.shownOrder || msg.type === 'order.placed')) this.showOrder(msg);
      return true;
    }
  }

  /** The side panel's tabs (`.tabs button[data-tab=NAME]` shows `#tab-NAME`), and the header's cart button
   * where the page has one; returns show(name). */
  function panelTabs() {
    function show(name) {
      for (const button of document.querySelectorAll('.tabs button')) {
        button.classList.toggle('active', button.dataset.tab === name);
      }
      for (const tab of document.querySelectorAll('.tab')) tab.hidden = tab.id !== `tab-${name}`;
    }
    for (const button of document.querySelectorAll('.tabs button')) {
      button.addEventListener('click', () => show(button.dataset.tab));
    }
    const cartButton = $('#cart-button');
    if (cartButton) {
      cartButton.addEventListener('click', () => {
        show('cart');
        $('.panel').scrollIntoView({behavior: 'smooth', block: 'start'});
      });
    }
    return show;
  }

  /** "12 Mar, 18:30" for a Unix time in seconds, in the reader's locale. */
  const when = (seconds) => new Date(seconds * 1000).toLocaleString(undefined,
    {day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit'});

  return {settings, params, $, el, toast, errorText, newId, money, toMinor, currencyDigits, serverNow,
    noteServerTime, clock, when, Channel, publish, playWhep, playOverChannel, codecsFit, pictureRect, trackPicture,
    RoomState, renderTags, productImage, renderChat, renderLive, tickCountdowns, everySecond, chatForm, connStatus,
    guestToken, viewerChannel, Shopper, panelTabs};
})();
