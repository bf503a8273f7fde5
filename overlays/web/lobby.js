// The lobby: every room from GET /api/rooms with links to watch it or open its studio, refreshed.
'use strict';

(() => {
  const {settings, $, el} = LC;
  const REFRESH_MS = 5000;

  if (settings.room && settings.room.missing) {
    const notice = $('#missing');
    notice.textContent = `There is no room called “${settings.room.id}”. Here are the rooms there are:`;
    notice.hidden = false;
  }

  function card(room) {
    const id = encodeURIComponent(room.id);
    return el('article.room-card', {dataset: {room: room.id}},
      el('div.room-art', {}, el('span.room-initial', {}, (room.title || room.id)[0].toUpperCase()),
        el('span.pill.viewers', {}, `${room.viewers} watching`)),
      el('div.room-body', {},
        el('h3', {}, room.title || room.id),
        el('div.muted', {}, room.id),
        el('div.room-links', {},
          el('a.button.primary', {href: `/watch/${id}`}, 'Watch'),
          el('a.button', {href: `/studio/${id}`}, 'Studio'))));
  }

  async function load() {
    const box = $('#rooms');
    try {
      const response = await fetch('/api/rooms', {cache: 'no-store'});
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
      box.replaceChildren(...(body.rooms.length ? body.rooms.map(card)
        : [el('p.empty', {}, 'No rooms yet. An operator creates them with POST /api/rooms.')]));
    } catch (err) {
      box.replaceChildren(el('p.empty.error', {}, `Could not load the rooms: ${err.message}`));
    }
  }

  load();
  setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
})();
