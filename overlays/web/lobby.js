// The lobby: every room from GET /api/rooms with links to watch it or open its studio, and under
// them the newest past broadcasts (GET /api/recordings) with links to their replays; refreshed.
'use strict';

(() => {
  const {settings, $, el, clock} = LC;
  const REFRESH_MS = 5000;
  const PAST_SHOWN = 12;

  if (settings.room && settings.room.missing) {
    const notice = $('#missing');
    notice.textContent = settings.room.recording
      ? `There is no recording “${settings.room.recording}” of the room “${settings.room.id}” (it may have been deleted).`
      : `There is no room called “${settings.room.id}”. Here are the rooms there are:`;
    notice.hidden = false;
  } else if (settings.room && settings.room.unavailable) {
    const notice = $('#missing');
    notice.textContent = `The recording “${settings.room.recording}” of the room “${settings.room.id}” ` +
      'cannot be reached right now. Try again in a moment.';
    notice.hidden = false;
  } else if (settings.room && settings.room.refused) {
    const notice = $('#missing');
    notice.textContent = `The room “${settings.room.id}” is private: ${settings.room.refused}. ` +
      'Open the link the shop gave you, with its viewer token.';
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

  function pastCard(recording) {
    const featured = recording.featured.length;
    return el('article.room-card.past-card', {dataset: {room: recording.room.id, recording: recording.id}},
      el('div.room-art', {}, el('span.pill.replay-pill', {}, 'Replay'),
        el('span.room-initial', {}, (recording.room.title || recording.room.id)[0].toUpperCase())),
      el('div.room-body', {},
        el('h3', {}, recording.room.title),
        el('div.muted', {}, `${LC.when(recording.started_at)} · ${clock(recording.duration)}`),
        featured ? el('div.muted.featured-count', {}, `${featured} product${featured > 1 ? 's' : ''} featured`) : null,
        el('div.room-links', {}, el('a.button.primary', {href: new URL(recording.links.replay).pathname},
          'Watch the replay'))));
  }

  async function loadPast() {
    try {
      const response = await fetch(`/api/recordings?limit=${PAST_SHOWN}`, {cache: 'no-store'});
      if (!response.ok) return;
      const {recordings} = await response.json();
      $('#past').replaceChildren(...recordings.map(pastCard));
      $('#past-section').hidden = !recordings.length;
    } catch (err) { /* the next refresh tries again */ }
  }

  async function load() {
    loadPast();
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
