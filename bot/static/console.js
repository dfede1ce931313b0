/*
 * Meridian Goods agent console: plain JS, no build step, no dependencies.
 *
 * Talks to POST /console/login|logout, GET /console/session and the agent socket
 * /ws/agent (protocol: docs/protocol.md, "Agent socket"). Every text from a customer, an
 * agent or the server is written with textContent: HTML in a message shows as text.
 *
 * DOM hooks used by tests: #login form (input[name=name], input[name=password]),
 * .cs-queue .cs-item[data-conversation], .cs-msg[data-role] with .cs-original, .cs-pivot,
 * .cs-delivered; textarea.cs-reply, .cs-preview, button.cs-send, .cs-notes, textarea.cs-note.
 */
(function () {
  'use strict';

  const S = {
    ws: null, csrf: null, agent: null, role: null, queue: [], tickets: [], faqs: [],
    current: null, transcript: null, seen: new Set(), unseen: 0, sound: false,
    previewTimer: 0, previewId: 0, typingSentAt: 0, customerTypingTimer: 0,
  };
  const el = {};
  const BASE_TITLE = document.title;

  // -------------------------------------------------------------- helpers
  function download(name, text, type) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = h('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }
  function h(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (key === 'text') node.textContent = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }
  function send(frame) {
    if (S.ws && S.ws.readyState === WebSocket.OPEN) S.ws.send(JSON.stringify(frame));
  }
  function waited(iso) {
    const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    return s < 60 ? s + ' s' : s < 3600 ? Math.round(s / 60) + ' min' : Math.round(s / 3600) + ' h';
  }
  function b64(text) {
    return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
  }
  function beep() {
    if (!S.sound) return;
    try {
      const ctx = new AudioContext();
      const osc = ctx.createOscillator();
      osc.frequency.value = 880;
      osc.connect(ctx.destination);
      osc.start();
      osc.stop(ctx.currentTime + 0.15);
    } catch (e) { /* no audio: the title badge still shows */ }
  }
  function renderTitle() {
    document.title = (S.unseen ? '(' + S.unseen + ') ' : '') + BASE_TITLE;
  }

  // ---------------------------------------------------------------- login
  async function login(e) {
    e.preventDefault();
    const form = new FormData(el.login);
    el.loginError.textContent = '';
    const res = await fetch('/console/login', {
      method: 'POST', credentials: 'same-origin',
      headers: { Authorization: 'Basic ' + b64(form.get('name') + ':' + form.get('password')) },
    });
    if (!res.ok) {
      el.loginError.textContent = res.status === 429
        ? 'Too many attempts: wait a few minutes.' : 'Wrong name or password.';
      return;
    }
    startSession(await res.json());
  }
  async function logout() {
    await fetch('/console/logout', {
      method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': S.csrf || '' },
    });
    if (S.ws) S.ws.close(1000);
    location.reload();
  }
  function startSession(session) {
    S.csrf = session.csrf;
    S.agent = session.agent;
    S.role = session.role;
    el.loginView.hidden = true;
    el.desk.hidden = false;
    el.who.textContent = session.agent + (session.role === 'admin' ? ' (admin)' : '');
    connect();
  }
  function connect() {
    const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
    const ws = S.ws = new WebSocket(scheme + location.host + '/ws/agent');
    ws.onopen = () => { send({ type: 'hello', v: 1, csrf: S.csrf }); el.status.textContent = ''; };
    ws.onmessage = (m) => onFrame(JSON.parse(m.data));
    ws.onclose = (e) => {
      el.status.textContent = e.code === 1008 ? 'Logged out.' : 'Disconnected: reconnecting…';
      if (e.code !== 1008 && e.code !== 1000) setTimeout(connect, 2000);
    };
  }

  // --------------------------------------------------------------- frames
  const HANDLERS = {
    ready(f) { S.faqs = f.faqs || []; renderCanned(); },
    queue(f) { S.queue = f.conversations; S.tickets = f.tickets; renderQueue(); },
    transcript(f) {
      if (S.current && f.conversation !== S.current) return;
      S.current = f.conversation;
      S.transcript = f;
      renderTranscript();
    },
    'conversation.event'(f) {
      if (f.conversation !== S.current) return;
      if (f.event.type === 'typing') return;
      send({ type: 'open', conversation: f.conversation });
    },
    'transcript.changed'(f) { if (f.conversation === S.current) send({ type: 'open', conversation: f.conversation }); },
    'customer.typing'(f) {
      if (f.conversation !== S.current) return;
      el.customerTyping.hidden = false;
      clearTimeout(S.customerTypingTimer);
      S.customerTypingTimer = setTimeout(() => { el.customerTyping.hidden = true; }, 5000);
    },
    note(f) {
      if (f.conversation === S.current && S.transcript) {
        S.transcript.notes.push(f.note);
        renderNotes();
      }
    },
    preview(f) {
      if (f.id !== 'p' + S.previewId) return;  // an older preview: the text changed since
      renderPreview(f);
    },
    sent(f) { el.reply.value = ''; el.approve.checked = false; el.preview.replaceChildren(); },
    canned(f) { el.reply.value = f.text; el.replyLang.value = f.lang; schedulePreview(); },
    replay(f) {  // the conversation as a replay test: the YAML file and its cassette
      download(f.file, f.yaml, 'application/yaml');
      download(f.file.replace(/\.yaml$/, '.cassette.json'), f.cassette, 'application/json');
      el.status.textContent = 'Saved ' + f.file + ' for the replay tests.';
    },
    released() { S.current = null; S.transcript = null; renderTranscript(); },
    reassigned(f) { el.status.textContent = 'Reassigned to ' + f.agent + '.'; },
    error(f) { el.status.textContent = f.message + ' (' + f.code + ')'; },
  };
  function onFrame(f) {
    const handler = HANDLERS[f.type];
    if (handler) handler(f);
  }

  // ---------------------------------------------------------------- queue
  function renderQueue() {
    let fresh = 0;
    const items = S.queue.map((c) => {
      const isNew = c.status === 'queued' && !S.seen.has(c.conversation);
      if (isNew) { fresh += 1; S.seen.add(c.conversation); }
      return h('li', {
        class: 'cs-item', 'data-conversation': c.conversation, 'data-status': c.status,
        'aria-current': c.conversation === S.current ? 'true' : null,
        onclick: () => open(c.conversation),
      }, [
        h('span', { class: 'cs-badge cs-lang', text: c.lang }),
        c.status === 'agent' ? h('span', { class: 'cs-badge cs-mine', text: 'mine' }) : null,
        c.timed_out ? h('span', { class: 'cs-badge cs-late', text: 'timed out' }) : null,
        h('span', { class: 'cs-wait', text: waited(c.queued_at) }),
        h('span', { class: 'cs-reason', text: c.reason || '' }),
        h('div', { class: 'cs-preview-line', dir: 'auto', text: c.preview }),
      ]);
    });
    el.queue.replaceChildren(...items);
    if (!items.length) el.queue.append(h('li', { class: 'cs-empty', text: 'Nobody is waiting.' }));
    el.tickets.replaceChildren(...S.tickets.map((t) => h('li', { class: 'cs-ticket' }, [
      h('span', { class: 'cs-badge cs-lang', text: t.lang }),
      h('span', { class: 'cs-wait', text: waited(t.created_at) }),
      h('div', { dir: 'auto', text: t.text }),
    ])));
    if (fresh) {
      if (document.hidden) { S.unseen += fresh; renderTitle(); }
      beep();
    }
  }
  function open(cid) {
    S.current = cid;
    send({ type: 'open', conversation: cid });
    renderQueue();
  }

  // ----------------------------------------------------------- transcript
  function renderTranscript() {
    const t = S.transcript;
    el.conversation.hidden = !t;
    if (!t) return;
    el.convTitle.textContent = t.conversation + ' · ' + t.lang + (t.locale ? ' (' + t.locale + ')' : '');
    el.claim.hidden = t.status !== 'queued';
    el.reassign.hidden = !(S.role === 'admin' && t.status === 'agent');
    for (const b of [el.release, el.close, el.send, el.reply]) b.disabled = !t.owner;
    el.log.replaceChildren(...t.messages.map(renderMessage));
    el.log.scrollTop = el.log.scrollHeight;
    renderNotes();
  }
  function renderMessage(m) {
    const cell = (cls, label, text, lang) => h('div', { class: 'cs-cell ' + cls }, [
      h('span', { class: 'cs-label', text: label }),
      h('div', { class: 'cs-text', dir: 'auto', lang: lang || null, text: text == null ? '—' : text }),
    ]);
    const row = [];
    if (m.role === 'customer') {
      row.push(cell('cs-original', 'Customer wrote (' + (m.lang || '?') + ')', m.original, m.lang));
      row.push(cell('cs-pivot', 'English', m.pivot, 'en'));
    } else if (m.role === 'agent') {
      row.push(cell('cs-original', 'Agent wrote', m.original));
      row.push(cell('cs-delivered', 'Customer read (' + m.lang + ')', m.delivered, m.lang));
    } else {
      row.push(cell('cs-pivot', 'English', m.pivot, 'en'));
      row.push(cell('cs-delivered', 'Customer read (' + (m.lang || '?') + ')', m.delivered, m.lang));
    }
    const meta = [m.role, m.source, (m.faq_ids || []).join(', ')].filter(Boolean).join(' · ');
    return h('div', { class: 'cs-msg', 'data-role': m.role, 'data-seq': m.seq }, [
      h('div', { class: 'cs-meta', text: meta }), h('div', { class: 'cs-row' }, row),
    ]);
  }
  function renderNotes() {
    const notes = (S.transcript && S.transcript.notes) || [];
    el.notes.replaceChildren(...notes.map((n) => h('li', { class: 'cs-note-item' }, [
      h('span', { class: 'cs-label', text: (n.agent || '?') + ' · ' + n.created_at.slice(11, 16) }),
      h('div', { dir: 'auto', text: n.text }),
    ])));
  }
  function renderCanned() {
    el.canned.replaceChildren(h('option', { value: '', text: 'Insert an FAQ answer…' }),
      ...S.faqs.map((f) => h('option', { value: f.id, text: f.id + ' — ' + f.question })));
  }

  // ---------------------------------------------------------------- reply
  function schedulePreview() {
    clearTimeout(S.previewTimer);
    const text = el.reply.value.trim();
    if (!text || !S.current) { el.preview.replaceChildren(); return; }
    S.previewTimer = setTimeout(() => {
      S.previewId += 1;
      send({ type: 'preview', conversation: S.current, text, lang: el.replyLang.value, id: 'p' + S.previewId });
    }, 300);
    const now = Date.now();
    if (S.transcript && S.transcript.owner && now - S.typingSentAt > 3000) {
      S.typingSentAt = now;
      send({ type: 'typing', conversation: S.current });
    }
  }
  function renderPreview(f) {
    const parts = [h('span', { class: 'cs-label', text: 'The customer will read (' + f.lang + ')' })];
    parts.push(h('div', { class: 'cs-text', dir: 'auto', lang: f.lang, text: f.delivered == null ? '—' : f.delivered }));
    for (const w of f.warnings) {
      const text = w.code === 'placeholder_lost' ? 'Check this was kept: ' + w.message
        : w.code === 'fuzzy_memory' ? 'Low confidence: ' + w.message + ' — check it before sending.'
        : w.code === 'back_translation' ? 'Low confidence: it reads back as “' + w.message + '” — check it before sending.'
        : 'No translation: ' + w.message + ' — tick "send untranslated" to send it as written.';
      parts.push(h('div', { class: 'cs-warning', role: 'alert', text }));
    }
    el.preview.replaceChildren(...parts);
  }
  function sendReply(e) {
    e.preventDefault();
    const text = el.reply.value.trim();
    if (!text || !S.current) return;
    send({
      type: 'message', conversation: S.current, text, lang: el.replyLang.value, id: 'r' + Date.now(),
      approve: el.approve.checked, untranslated: el.untranslated.checked,
    });
  }
  function addNote(e) {
    e.preventDefault();
    const text = el.note.value.trim();
    if (!text || !S.current) return;
    send({ type: 'note', conversation: S.current, text });
    el.note.value = '';
  }

  // ----------------------------------------------------------------- build
  function build() {
    const root = document.getElementById('app');
    el.loginError = h('p', { class: 'cs-error', role: 'alert' });
    el.login = h('form', { id: 'login', class: 'cs-login', onsubmit: login }, [
      h('h1', { text: 'Agent console' }),
      h('label', { text: 'Name' }, [h('input', { name: 'name', autocomplete: 'username', required: true })]),
      h('label', { text: 'Password' }, [h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })]),
      h('button', { type: 'submit', text: 'Log in' }), el.loginError,
    ]);
    el.loginView = h('main', { class: 'cs-login-view' }, [el.login]);

    el.who = h('span', { class: 'cs-who' });
    el.status = h('span', { class: 'cs-status', role: 'status' });
    const sound = h('input', { type: 'checkbox', onchange: (e) => { S.sound = e.target.checked; } });
    const header = h('header', { class: 'cs-header' }, [
      h('strong', { text: 'Meridian Goods · Agent console' }), el.who, el.status,
      h('label', { class: 'cs-sound' }, [sound, document.createTextNode(' Sound')]),
      h('button', { type: 'button', class: 'cs-logout', onclick: logout, text: 'Log out' }),
    ]);
    el.queue = h('ul', { class: 'cs-queue', 'aria-label': 'Waiting conversations' });
    el.tickets = h('ul', { class: 'cs-tickets', 'aria-label': 'Messages left' });
    const side = h('aside', { class: 'cs-side' }, [
      h('h2', { text: 'Queue' }), el.queue, h('h2', { text: 'Messages left' }), el.tickets,
    ]);

    el.convTitle = h('h2', { class: 'cs-conv-title' });
    el.claim = h('button', { type: 'button', class: 'cs-claim', text: 'Claim', onclick: () => send({ type: 'claim', conversation: S.current }) });
    el.release = h('button', { type: 'button', class: 'cs-release', text: 'Release to bot', onclick: () => send({ type: 'release', conversation: S.current }) });
    el.close = h('button', { type: 'button', class: 'cs-close', text: 'Close', onclick: () => send({ type: 'close', conversation: S.current }) });
    el.export = h('button', { type: 'button', class: 'cs-export', text: 'Save as replay test', title: 'Download this conversation as a replay file (docs/replay.md)', onclick: () => send({ type: 'replay', conversation: S.current }) });
    el.reassignTo = h('input', { class: 'cs-reassign-to', placeholder: 'agent name', 'aria-label': 'Reassign to' });
    el.reassign = h('form', { class: 'cs-reassign', hidden: true, onsubmit: (e) => {
      e.preventDefault();
      const name = el.reassignTo.value.trim();
      if (name) send({ type: 'reassign', conversation: S.current, agent: name });
    } }, [el.reassignTo, h('button', { type: 'submit', text: 'Reassign' })]);
    el.log = h('div', { class: 'cs-log', role: 'log', 'aria-live': 'polite' });
    el.customerTyping = h('div', { class: 'cs-customer-typing', hidden: true, text: 'The customer is typing…' });
    el.reply = h('textarea', { class: 'cs-reply', rows: '3', placeholder: 'Reply (in English or any launch language)…', oninput: schedulePreview });
    el.replyLang = h('select', { class: 'cs-reply-lang', 'aria-label': 'Reply language', onchange: schedulePreview },
      ['en', 'zh', 'es', 'fr', 'de', 'ja', 'ko', 'pt', 'it', 'ru', 'ar', 'nl'].map((l) => h('option', { value: l, text: l })));
    el.canned = h('select', { class: 'cs-canned', 'aria-label': 'Canned answer', onchange: (e) => {
      if (e.target.value) send({ type: 'canned', conversation: S.current, faq: e.target.value });
      e.target.value = '';
    } });
    el.preview = h('div', { class: 'cs-preview', 'aria-live': 'polite' });
    el.approve = h('input', { type: 'checkbox', class: 'cs-approve' });
    el.untranslated = h('input', { type: 'checkbox', class: 'cs-untranslated' });
    el.send = h('button', { type: 'submit', class: 'cs-send', text: 'Send' });
    const replyForm = h('form', { class: 'cs-reply-form', onsubmit: sendReply }, [
      h('div', { class: 'cs-tools' }, [el.replyLang, el.canned]), el.reply, el.preview,
      h('div', { class: 'cs-tools' }, [
        h('label', {}, [el.approve, document.createTextNode(' Good translation: remember it')]),
        h('label', {}, [el.untranslated, document.createTextNode(' Send untranslated')]), el.send,
      ]),
    ]);
    el.notes = h('ul', { class: 'cs-notes', 'aria-label': 'Internal notes' });
    el.note = h('textarea', { class: 'cs-note', rows: '2', placeholder: 'Internal note (never shown to the customer)' });
    const noteForm = h('form', { class: 'cs-note-form', onsubmit: addNote }, [
      el.note, h('button', { type: 'submit', class: 'cs-add-note', text: 'Add note' }),
    ]);
    el.conversation = h('section', { class: 'cs-conversation', hidden: true }, [
      h('div', { class: 'cs-conv-header' }, [el.convTitle, el.claim, el.release, el.close, el.reassign, el.export]),
      el.log, el.customerTyping, replyForm,
      h('h3', { text: 'Notes' }), el.notes, noteForm,
    ]);
    el.desk = h('div', { class: 'cs-desk', hidden: true }, [
      header, h('div', { class: 'cs-main' }, [side, el.conversation]),
    ]);
    root.replaceChildren(el.loginView, el.desk);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) { S.unseen = 0; renderTitle(); }
    });
    setInterval(renderQueue, 15000);  // wait times move on
  }

  build();
  fetch('/console/session', { credentials: 'same-origin' })
    .then((res) => (res.ok ? res.json() : null))
    .then((session) => { if (session) startSession(session); });
})();
