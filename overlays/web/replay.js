// The replay of a recorded broadcast: plays the recording's HLS playlist (the browser's own HLS
// where it has one, else hls.js over Media Source), shows each product tag over the picture exactly
// while it was pinned in the stream (driven by the playhead, so seeking either way follows), lists
// the products featured in the stream with the moments they were shown (tap one to seek there), and
// sells them at the shop's price: flash-sale prices ended with the live show.
'use strict';

(() => {
  const {settings, $, el, toast, errorText, money, clock, RoomState} = LC;
  const room = settings.room;
  const recording = settings.recording;
  const video = $('#video');
  const tagLayer = $('#tags');
  const HLS_TYPE = 'application/vnd.apple.mpegurl';

  $('#room-title').textContent = room.title;
  $('#recorded').textContent = `${LC.when(recording.started_at)} · ${clock(recording.duration)}`;
  $('#watch-live').href = `/watch/${encodeURIComponent(room.id)}`;
  document.title = `${room.title} (replay) · livecart`;

  const state = new RoomState(render);

  // ---- the timeline: what viewers saw, by media time ------------------------------------------
  /**
   * The recording's commerce events in media-time order. `tagsAt(t)` is the set of tags pinned at
   * second `t` of the recording (a pin of a pinned tag's id moves it); `featured` holds, per
   * product in order of first appearance, the moments its tags were pinned and the flash sale it
   * had in the stream (its price, for the card).
   */
  class Timeline {
    constructor(events) {
      this.events = events.filter((e) => typeof e.media_ts === 'number')
        .sort((a, b) => a.media_ts - b.media_ts || a.seq - b.seq);
      this.featured = new Map();
      const pinned = new Set();
      for (const event of this.events) {
        const data = event.data || {};
        if (event.type === 'tag.pinned') {
          if (!pinned.has(data.id)) this.product(data.product_id, data.label).moments.push(event.media_ts);
          pinned.add(data.id);
        } else if (event.type === 'tag.unpinned') {
          pinned.delete(data.tag);
        } else if (event.type === 'sale.started') {
          this.product(data.product_id).sale = data;
        }
      }
    }

    product(id, label) {
      if (!this.featured.has(id)) this.featured.set(id, {id, label: label || null, moments: [], sale: null});
      return this.featured.get(id);
    }

    tagsAt(t) {
      const tags = new Map();
      for (const event of this.events) {
        if (event.media_ts > t) break;
        if (event.type === 'tag.pinned') tags.set(event.data.id, event.data);
        else if (event.type === 'tag.unpinned') tags.delete(event.data.tag);
      }
      return tags;
    }
  }
  let timeline = new Timeline([]);

  // ---- rendering ------------------------------------------------------------------------------
  function render(what) {
    if (what === 'cart' || what === 'order') {
      shopper.renderCart();
      keepCartMark();
      return;
    }
    shopper.renderCart();
    renderTags();
    renderFeatured();
  }

  function renderTags() {
    LC.renderTags(tagLayer, state, {onTag: (tag, product) => shopper.tap(product, null)});
  }

  /** The tags pinned at `t` seconds, drawn only when they changed (a frame callback calls this 30 times a second). */
  let shownTags = '';
  function showAt(t) {
    const tags = timeline.tagsAt(t);
    const key = JSON.stringify([...tags.values()].map((tag) => [tag.id, tag.x, tag.y, tag.label]));
    if (key === shownTags) return;
    shownTags = key;
    state.tags = tags;
    renderTags();
  }

  function renderFeatured() {
    const box = $('#featured');
    if (!timeline.featured.size) {
      box.replaceChildren(el('p.empty', {}, 'No products were featured in this stream.'));
      return;
    }
    box.replaceChildren(...[...timeline.featured.values()].map((item) => {
      const product = state.products.get(item.id);
      const title = product ? product.title : (item.label || item.id);
      const left = product ? product.available : 0;
      return el('div.product.featured', {dataset: {product: item.id}},
        LC.productImage(product || {id: item.id, title}),
        el('div.product-body', {},
          el('div.product-title', {}, title),
          product ? el('div.product-price', {}, el('b', {}, money(product.price, product.currency)),
            el('span.muted', {}, left > 0 ? ` · ${left} left` : ' · sold out'))
            : el('div.product-price.muted', {}, 'No longer in the shop'),
          item.sale ? el('div.flash-ended', {}, 'Flash price ', el('s', {}, money(item.sale.price, item.sale.currency)),
            ' ended with the live show: now at the shop’s price') : null,
          item.moments.length ? el('div.moments', {}, 'Shown at ', ...item.moments.map((moment) =>
            el('button.moment', {type: 'button', dataset: {at: moment}, 'aria-label': `Play from ${clock(moment)}`,
              onclick: () => seek(moment)}, clock(moment)))) : null),
        el('button.add', {type: 'button', disabled: !product || left <= 0,
          onclick: () => shopper.tap(product, null)}, product && left > 0 ? 'Add' : 'Sold out'));
    }));
  }

  function seek(moment) {
    video.currentTime = moment;
    video.play().catch(() => {});
    $('#stage').scrollIntoView({behavior: 'smooth', block: 'nearest'});
  }

  // ---- the player -----------------------------------------------------------------------------
  function stageMessage(text) {
    const msg = $('#stage-msg');
    msg.hidden = !text;
    msg.textContent = text || '';
  }

  /** The browser's own HLS where it has it (Safari), else hls.js; `data-player` on the video says which. */
  function play() {
    if (video.canPlayType(HLS_TYPE)) {
      video.dataset.player = 'native';
      video.src = recording.hls;
      return;
    }
    if (!window.Hls || !Hls.isSupported()) {
      stageMessage('This browser cannot play the replay.');
      return;
    }
    video.dataset.player = 'hls.js';
    const hls = new Hls();
    let recovered = false;
    hls.on(Hls.Events.ERROR, (event, data) => {
      if (!data.fatal) return;
      if (data.type === Hls.ErrorTypes.MEDIA_ERROR && !recovered) {
        recovered = true;
        hls.recoverMediaError();
        return;
      }
      hls.destroy();
      stageMessage('The replay could not be played. Reload the page to try again.');
    });
    hls.loadSource(recording.hls);
    hls.attachMedia(video);
  }
  video.addEventListener('loadeddata', () => stageMessage(null));
  video.addEventListener('error', () => stageMessage('The replay could not be played. Reload the page to try again.'));

  // The playhead drives the tags: each presented frame where the browser says which it is, and
  // every seek and time update (a paused seek, a browser without frame callbacks).
  const onPlayhead = () => showAt(video.currentTime);
  video.addEventListener('seeked', onPlayhead);
  video.addEventListener('seeking', onPlayhead);
  video.addEventListener('timeupdate', onPlayhead);
  if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
    const onFrame = (now, metadata) => {
      showAt(metadata.mediaTime);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  }
  LC.trackPicture(video, tagLayer);

  // ---- shopping: the room channel, opened when the shopper first buys ---------------------------
  // A replay viewer is no viewer of the live room: the channel (which counts as one) opens at the
  // first add, or at load when this browser holds a cart in the room (marked here).
  const cartMark = `livecart.cart.${room.id}`;
  let joined = false;
  function keepCartMark() {
    if (!joined) return;
    if (state.cart.quantity) localStorage.setItem(cartMark, '1');
    else localStorage.removeItem(cartMark);
  }

  let joining = null;
  function channel() {
    joining ??= join().catch((err) => { joining = null; throw err; });
    return joining;
  }
  async function join() {
    let ready;
    const snapshotted = new Promise((resolve, reject) => { ready = {resolve, reject}; });
    const opened = await LC.viewerChannel(room.id, {
      snapshot: (msg) => {
        // The live room's products and this shopper's cart; its tags and sales are not the replay's.
        state.you = msg.you;
        state.products = new Map((msg.products || []).map((p) => [p.id, p]));
        if (msg.cart) state.cart = msg.cart;
        joined = true;
        render('all');
        keepCartMark();
        ready.resolve();
      },
      event: (msg) => { if (msg.type.startsWith('product.')) state.apply(msg); },
      direct: (msg) => shopper.direct(msg),
      status: (status, detail) => {
        LC.connStatus(status, detail);
        if (status === 'refused') ready.reject({code: 'unauthorized', message: detail});
        if (status === 'open' && joined) opened.request('cart').then((ack) => state.setCart(ack.cart), () => {});
      },
    });
    opened.connect();
    await snapshotted;
    return opened;
  }
  const shopper = new LC.Shopper(state, channel);
  LC.panelTabs();

  // ---- start ----------------------------------------------------------------------------------
  async function load(url) {
    const response = await fetch(url, {cache: 'no-store'});
    const body = await response.json();
    if (!response.ok) throw body.error || {message: response.statusText};
    return body;
  }

  async function main() {
    play();
    try {
      const [events, shop] = await Promise.all([load(recording.timeline),
        load(`/api/rooms/${encodeURIComponent(room.id)}/products`)]);
      timeline = new Timeline(events.events);
      if (!joined) state.products = new Map(shop.products.map((p) => [p.id, p]));
    } catch (err) {
      toast(`The featured products could not be loaded: ${errorText(err)}`, 'error');
    }
    shownTags = null;
    render('all');
    onPlayhead();
    if (localStorage.getItem(cartMark)) channel().catch((err) => toast(errorText(err), 'error'));
  }

  render('all');
  main();
})();
