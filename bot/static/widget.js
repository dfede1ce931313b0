/*!
 * Meridian Goods customer-service chat widget (plain ES2020, no dependencies).
 *
 * Embed with one snippet, anywhere in the page:
 *
 *   <script src="https://shop-support.example/widget.js"
 *           data-server="wss://shop-support.example/ws/chat"
 *           data-locale="de-DE" data-theme="light" async></script>
 *
 * Attributes (all optional):
 *   data-server    chat socket URL; default ws(s)://<origin of this script>/ws/chat
 *   data-locale    BCP 47 locale ("de-DE"); default <html lang>, then navigator.language.
 *                  The UI language is its primary subtag if supported
 *                  (en zh es fr de ja ko pt it ru ar nl), else en.
 *   data-theme     "light" (default), "dark", or "auto" (follows prefers-color-scheme)
 *   data-position  "right" (default) or "left": the page corner of the launcher
 *   data-open      "true" to start with the panel open
 *
 * widget.css and the UI strings (/widget/i18n/LL.json) are loaded from the script's origin
 * (that server must allow CORS for the JSON when the shop page is on another origin).
 *
 * JavaScript API (the only global): window.MeridianChat.open(), .close(), .send(text)
 *
 * DOM hooks: #mg-chat root, button.mg-launcher (.mg-badge), .mg-panel[role=dialog],
 * .mg-log[role=log] with .mg-msg[data-role=customer|bot|agent|system][data-seq],
 * .mg-choices[role=group] > button.mg-choice[data-faq-id] (a clarify reply's buttons),
 * textarea.mg-input, button.mg-send, button.mg-human, button.mg-cancel, button.mg-leave,
 * .mg-typing, .mg-status.
 * Message text is only ever set with textContent. Protocol: docs/protocol.md.
 */
(() => {
  'use strict';
  if (window.MeridianChat || document.getElementById('mg-chat')) return;

  // ---------------------------------------------------------------- constants
  const SUPPORTED = ['en', 'zh', 'es', 'fr', 'de', 'ja', 'ko', 'pt', 'it', 'ru', 'ar', 'nl'];
  const RTL_LANGS = ['ar'];
  const LANG_NAMES = {
    en: 'English', zh: '中文', es: 'Español', fr: 'Français', de: 'Deutsch', ja: '日本語',
    ko: '한국어', pt: 'Português', it: 'Italiano', ru: 'Русский', ar: 'العربية', nl: 'Nederlands',
  };
  /** English fallback, used when /widget/i18n/LL.json cannot be fetched. */
  const EN = {
    title: 'Meridian Goods support',
    launcher_label: 'Open chat with Meridian Goods support',
    input_placeholder: 'Type your message…',
    send: 'Send',
    talk_to_human: 'Talk to a human',
    cancel_handoff: 'Cancel request',
    leave_message: 'Leave a message',
    back_to_bot: 'Back to the assistant',
    close: 'Close chat',
    minimize: 'Minimize chat',
    connecting: 'Connecting…',
    reconnecting: 'Connection lost. Reconnecting…',
    offline: 'You are offline. Messages will be sent when the connection is back.',
    typing: 'The assistant is typing…',
    agent_typing: 'The agent is typing…',
    you: 'You',
    assistant: 'Assistant',
    agent: 'Agent',
    unread: '{count} unread messages',
    sources: 'Sources',
    language_label: 'Language',
  };
  const TYPING_TIMEOUT_MS = 15000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const ICONS = {
    chat: 'M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z',
    down: 'M6 9l6 6 6-6',
    close: 'M6 6l12 12M18 6L6 18',
    send: 'M4 12l16-8-6 16-2-6-8-2z',
  };

  // ------------------------------------------------------- configuration
  const script = document.currentScript ||
    [...document.querySelectorAll('script[src*="widget.js"]')].pop() || null;
  const attr = (name) => ((script && script.getAttribute('data-' + name)) || '').trim();
  const ORIGIN = (() => {
    try { return new URL(script.src, location.href).origin; } catch (e) { return location.origin; }
  })();
  const SERVER = (attr('server') || ORIGIN.replace(/^http/, 'ws') + '/ws/chat')
    .replace(/^http(s?):/, 'ws$1:');
  const STORE_KEY = 'mg-chat:' + SERVER;
  const EXPLICIT_LOCALE = attr('locale');
  const INITIAL_LOCALE = EXPLICIT_LOCALE || sessionGet('mg-chat-locale') ||
    document.documentElement.lang || navigator.language || 'en';
  const THEME = ['dark', 'auto'].includes(attr('theme')) ? attr('theme') : 'light';
  const POSITION = attr('position') === 'left' ? 'left' : 'right';

  function reduceLang(locale) {
    const primary = String(locale || '').trim().toLowerCase().split(/[-_]/)[0];
    return SUPPORTED.includes(primary) ? primary : 'en';
  }
  const defaultDir = (lang) => (RTL_LANGS.includes(lang) ? 'rtl' : 'ltr');

  // ------------------------------------------------------------------ state
  const S = {
    locale: INITIAL_LOCALE.replace(/_/g, '-'),
    lang: reduceLang(INITIAL_LOCALE),
    dir: defaultDir(reduceLang(INITIAL_LOCALE)),
    ui: { ...EN },
    ws: null, ready: false, started: false, stopped: false,
    attempt: 0, retryTimer: 0, typingTimer: 0,
    lastSeq: 0,     // highest seq applied; events with seq <= lastSeq are duplicates
    headSeq: 0,     // welcome.seq: events up to it are history replay (no badge, no typing)
    resume: null, conversation: null,
    outbox: new Map(),   // client id -> {id, text, choice, el}: sent or queued, not yet acked
    byId: new Map(),     // client id -> customer bubble
    streams: new Map(),  // reply_to -> bot bubble being streamed
    lastSentId: null, handoffQueued: false, handoff: false, agent: null,
    timedOut: false, ticketMode: false, typingSentAt: 0,
    open: false, unread: 0, status: 'idle', typingWho: null,
  };
  const el = {};  // DOM references, filled by build()

  // ------------------------------------------------------------- storage
  function sessionGet(key) {
    try { return sessionStorage.getItem(key) || ''; } catch (e) { return ''; }
  }
  function sessionSet(key, value) {
    try { sessionStorage.setItem(key, value); } catch (e) { /* storage disabled */ }
  }
  function loadSession() {
    try { return JSON.parse(localStorage.getItem(STORE_KEY) || '{}') || {}; } catch (e) { return {}; }
  }
  function saveSession() {
    const pending = [...S.outbox.values()].map(({ id, text, choice }) => ({ id, text, choice }));
    try {
      if (!S.resume && !pending.length) localStorage.removeItem(STORE_KEY);
      else localStorage.setItem(STORE_KEY, JSON.stringify(
        { resume: S.resume, conversation: S.conversation, pending }));
    } catch (e) { /* storage disabled or full: the conversation lasts for this page only */ }
  }

  // ------------------------------------------------------------- helpers
  function h(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (v === false || v == null) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }
  function icon(name) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    svg.setAttribute('class', 'mg-icon mg-icon-' + name);
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', ICONS[name]);
    svg.append(path);
    return svg;
  }
  const fmt = (s, vars) => String(s).replace(/\{(\w+)\}/g, (m, k) => (k in vars ? vars[k] : m));
  function newId() {
    const c = window.crypto;
    if (c && typeof c.randomUUID === 'function') return c.randomUUID();
    const bytes = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(bytes);
    else bytes.forEach((_, i) => { bytes[i] = Math.floor(Math.random() * 256); });
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  // ------------------------------------------------------------- i18n
  const stringCache = {};
  async function loadStrings(lang) {
    if (!stringCache[lang]) {
      stringCache[lang] = fetch(`${ORIGIN}/widget/i18n/${lang}.json`, { credentials: 'omit' })
        .then((r) => (r.ok ? r.json() : Promise.reject(new Error('HTTP ' + r.status))))
        .then((data) => {
          const ui = { ...EN };
          for (const key of Object.keys(EN)) {
            if (data && data.ui && typeof data.ui[key] === 'string') ui[key] = data.ui[key];
          }
          const dir = data && (data.dir === 'rtl' || data.dir === 'ltr') ? data.dir : defaultDir(lang);
          return { ui, dir };
        })
        .catch(() => ({ ui: { ...EN }, dir: defaultDir(lang) }));
    }
    return stringCache[lang];
  }
  /** Write the current UI strings into every element marked data-mg-t / -aria / -ph. */
  function applyStrings() {
    const ui = S.ui;
    el.root.lang = S.lang;
    el.root.dir = S.dir;
    el.root.querySelectorAll('[data-mg-t]').forEach((n) => { n.textContent = ui[n.dataset.mgT]; });
    el.root.querySelectorAll('[data-mg-aria]').forEach((n) => {
      n.setAttribute('aria-label', ui[n.dataset.mgAria]);
      if (n.tagName === 'BUTTON') n.title = ui[n.dataset.mgAria];
    });
    el.input.placeholder = ui.input_placeholder;
    el.lang.value = S.lang;
    renderLauncher();
    renderHeader();
    setStatus(S.status);
    if (S.typingWho) renderTyping();
  }
  async function setLanguage(lang, locale) {
    S.lang = lang;
    S.locale = locale;
    const { ui, dir } = await loadStrings(lang);
    if (S.lang !== lang) return;  // a later choice won
    S.ui = ui;
    S.dir = dir;
    applyStrings();
  }

  // ------------------------------------------------------------- DOM
  function build() {
    el.launcher = h('button', {
      type: 'button', class: 'mg-launcher', 'aria-expanded': 'false', 'aria-controls': 'mg-panel',
      onclick: () => (S.open ? closePanel(true) : openPanel(true)),
    }, [icon('chat'), icon('down'), h('span', { class: 'mg-badge', 'aria-hidden': 'true', hidden: true })]);
    el.badge = el.launcher.querySelector('.mg-badge');

    el.lang = h('select', { id: 'mg-lang', class: 'mg-lang', onchange: onLanguagePicked },
      SUPPORTED.map((code) => h('option', { value: code, lang: code, text: LANG_NAMES[code] })));
    el.subtitle = h('span', { class: 'mg-subtitle', dir: 'auto' });
    const header = h('div', { class: 'mg-header' }, [
      h('div', { class: 'mg-heading' }, [
        h('span', { class: 'mg-title', id: 'mg-title', 'data-mg-t': 'title' }), el.subtitle,
      ]),
      h('label', { class: 'mg-sr', for: 'mg-lang', 'data-mg-t': 'language_label' }), el.lang,
      h('button', {
        type: 'button', class: 'mg-close', 'data-mg-aria': 'close', onclick: () => closePanel(true),
      }, [icon('close')]),
    ]);

    el.status = h('div', { class: 'mg-status', role: 'status', 'aria-live': 'polite' });
    el.log = h('div', { class: 'mg-log', role: 'log', 'aria-live': 'polite', tabindex: '0', 'aria-labelledby': 'mg-title' });
    el.typingText = h('span', { class: 'mg-typing-text' });
    el.typing = h('div', { class: 'mg-typing', hidden: true }, [
      h('span', { class: 'mg-dots', 'aria-hidden': 'true' }, [h('i'), h('i'), h('i')]), el.typingText,
    ]);
    el.input = h('textarea', {
      id: 'mg-input', class: 'mg-input', rows: '1', autocomplete: 'off', enterkeyhint: 'send',
      onkeydown: onInputKey, oninput: onInput,
    });
    el.send = h('button', { type: 'submit', class: 'mg-send', 'data-mg-aria': 'send' }, [icon('send')]);
    const composer = h('form', { class: 'mg-composer', onsubmit: onSubmit }, [
      h('label', { class: 'mg-sr', for: 'mg-input', 'data-mg-t': 'input_placeholder' }), el.input, el.send,
    ]);
    el.human = h('button', {
      type: 'button', class: 'mg-human', 'data-mg-t': 'talk_to_human', onclick: requestHuman,
    });
    // While queued: take the request back; after handoff.timeout: leave a message instead.
    el.cancel = h('button', {
      type: 'button', class: 'mg-action mg-cancel', 'data-mg-t': 'cancel_handoff', hidden: true,
      onclick: () => sendFrame({ type: 'handoff.cancel' }),
    });
    el.leave = h('button', {
      type: 'button', class: 'mg-action mg-leave', 'data-mg-t': 'leave_message', hidden: true,
      onclick: startTicket,
    });

    el.panel = h('div', {
      id: 'mg-panel', class: 'mg-panel', role: 'dialog', 'data-mg-aria': 'title', hidden: true,
    }, [header, el.status, el.log, el.typing, composer, h('div', { class: 'mg-actions' }, [el.human, el.cancel, el.leave])]);

    el.root = h('div', {
      id: 'mg-chat', 'data-theme': THEME, 'data-position': POSITION, style: 'visibility:hidden',
      onkeydown: onRootKey,
    }, [el.panel, el.launcher]);
    document.body.append(el.root);
  }
  function loadCss() {
    const show = () => el.root.style.removeProperty('visibility');
    if (document.querySelector('link[data-mg-chat]')) { show(); return; }
    const link = h('link', { rel: 'stylesheet', href: ORIGIN + '/widget.css', 'data-mg-chat': '' });
    link.addEventListener('load', show);
    link.addEventListener('error', show);
    setTimeout(show, 3000);
    document.head.append(link);
  }

  // -------------------------------------------------------- rendering
  function renderLauncher() {
    const { ui } = S;
    let label = S.open ? ui.minimize : ui.launcher_label;
    if (!S.open && S.unread) label += ' (' + fmt(ui.unread, { count: S.unread }) + ')';
    el.launcher.setAttribute('aria-label', label);
    el.launcher.title = label;
    el.launcher.setAttribute('aria-expanded', String(S.open));
    el.badge.textContent = S.unread > 99 ? '99+' : String(S.unread);
    el.badge.hidden = S.open || !S.unread;
  }
  function renderHeader() {
    el.subtitle.textContent = S.agent ? `${S.agent} · ${S.ui.agent}` : '';
    const busy = S.handoff || !!S.agent || S.handoffQueued;
    el.human.setAttribute('aria-disabled', String(busy));
    const waiting = S.handoff && !S.agent;
    el.human.hidden = waiting;
    el.cancel.hidden = !waiting;
    el.cancel.textContent = S.timedOut ? S.ui.back_to_bot : S.ui.cancel_handoff;
    el.leave.hidden = !(waiting && S.timedOut);
    el.leave.setAttribute('aria-pressed', String(S.ticketMode));
    el.input.placeholder = S.ticketMode ? S.ui.leave_message : S.ui.input_placeholder;
  }
  function setStatus(state) {
    S.status = state;
    el.root.dataset.status = state;
    el.status.dataset.state = state;
    const text = ['connecting', 'reconnecting', 'offline'].includes(state) ? S.ui[state] : '';
    if (el.status.textContent !== text) el.status.textContent = text;
  }
  function renderTyping() {
    const key = S.typingWho === 'agent' ? 'agent_typing' : 'typing';
    el.typingText.textContent = fmt(S.ui[key], { agent: S.agent || S.ui.agent });
    el.typing.dataset.who = S.typingWho;
    el.typing.hidden = false;
  }
  function showTyping(who) {
    S.typingWho = who === 'agent' ? 'agent' : 'bot';
    renderTyping();
    clearTimeout(S.typingTimer);
    S.typingTimer = setTimeout(hideTyping, TYPING_TIMEOUT_MS);
  }
  function hideTyping() {
    clearTimeout(S.typingTimer);
    S.typingWho = null;
    el.typing.hidden = true;
  }

  // -------------------------------------------------------- messages
  // The log scrolls smoothly, so right after scrollToEnd() scrollTop is still on its way:
  // count the view as "at the end" until that scroll has had time to finish, or a reply that
  // follows its ack within a few hundred ms would not be followed.
  let autoScroll = 0;
  const nearEnd = () =>
    !!autoScroll || el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 80;
  const scrollToEnd = () => {
    el.log.scrollTop = el.log.scrollHeight;
    clearTimeout(autoScroll);
    autoScroll = setTimeout(() => { autoScroll = 0; }, 800);
  };

  /** Put a bubble in seq order: server events go before the still-pending customer bubbles. */
  function place(node, { atEnd = false } = {}) {
    const stick = nearEnd();
    const pending = [...el.log.querySelectorAll('.mg-msg[data-state="pending"]')].find((n) => n !== node);
    if (atEnd || node.dataset.state === 'pending' || !pending) el.log.append(node);
    else el.log.insertBefore(node, pending);
    if (stick || node.dataset.role === 'customer') scrollToEnd();
  }
  function whoLabel(role, name) {
    if (role === 'customer') return h('span', { class: 'mg-who', 'data-mg-t': 'you', text: S.ui.you });
    if (role === 'bot') return h('span', { class: 'mg-who', 'data-mg-t': 'assistant', text: S.ui.assistant });
    if (role === 'agent' && name) return h('span', { class: 'mg-who', dir: 'auto', text: name });
    if (role === 'agent') return h('span', { class: 'mg-who', 'data-mg-t': 'agent', text: S.ui.agent });
    return null;
  }
  function addMessage(role, text, { seq, lang, name, state, id, atEnd } = {}) {
    const node = h('div', {
      class: 'mg-msg mg-msg-' + role, 'data-role': role, 'data-seq': seq, 'data-state': state,
      'data-id': id, lang,
    }, [whoLabel(role, name), h('div', { class: 'mg-text', dir: 'auto', text: text || '' })]);
    place(node, { atEnd });
    return node;
  }
  function setText(node, text) {
    node.querySelector('.mg-text').textContent = text || '';
  }
  // The help articles a reply rests on, by their localized titles (the ids stay in a data
  // attribute for scripts and tests; a customer never reads "contact.email").
  function addSources(node, sources, ids) {
    if (!Array.isArray(ids) || !ids.length) return;
    const titled = Array.isArray(sources) ? sources.filter((s) => s && s.title) : [];
    if (!titled.length) return;
    const old = node.querySelector('.mg-sources');
    if (old) old.remove();
    const items = [];
    titled.forEach((s, i) => {
      if (i) items.push(' · ');
      items.push(h('span', { class: 'mg-source', 'data-faq-id': String(s.id), text: String(s.title) }));
    });
    node.append(h('div', { class: 'mg-sources', 'data-faq-ids': ids.join(' ') }, [
      h('span', { 'data-mg-t': 'sources', text: S.ui.sources }), ': ', ...items,
    ]));
  }
  // A clarify reply: which of these entries did the customer mean? One button per entry,
  // its localized title as text; a click sends that title as the customer's message with
  // the entry's id as `choice`, and the bot answers with that entry. Only the latest
  // reply's buttons can be used (the server checks it too).
  function disableChoices() {
    el.log.querySelectorAll('button.mg-choice').forEach((b) => { b.disabled = true; });
  }
  function addChoices(node, choices) {
    const valid = Array.isArray(choices)
      ? choices.filter((c) => c && typeof c.id === 'string' && typeof c.title === 'string')
      : [];
    if (!valid.length) return;
    const textId = 'mg-q-' + (node.dataset.seq || newId());
    node.querySelector('.mg-text').id = textId;
    const group = h('div', { class: 'mg-choices', role: 'group', 'aria-labelledby': textId },
      valid.map((c) => h('button', {
        type: 'button', class: 'mg-choice', dir: 'auto', 'data-faq-id': c.id, text: c.title,
        onclick: (e) => {
          if (e.currentTarget.disabled) return;
          disableChoices();
          e.currentTarget.setAttribute('aria-pressed', 'true');
          send(c.title, c.id);
        },
      })));
    node.append(group);
  }
  const systemLine = (text) => addMessage('system', text, { atEnd: true });

  // -------------------------------------------------------- server events
  function onFrame(data) {
    let ev;
    try { ev = JSON.parse(data); } catch (e) { return; }
    if (!ev || typeof ev !== 'object' || typeof ev.type !== 'string') return;
    if (ev.type === 'welcome') { onWelcome(ev); return; }
    if (ev.type === 'error') { onError(ev); return; }
    if (typeof ev.seq !== 'number' || ev.seq <= S.lastSeq) return;  // duplicate after resume
    S.lastSeq = ev.seq;
    const handler = HANDLERS[ev.type];
    if (handler) handler(ev, ev.seq > S.headSeq);  // unknown types: skipped, seq still counted
  }
  function onWelcome(ev) {
    if (S.conversation && ev.conversation !== S.conversation) resetConversation();
    S.ready = true;
    S.attempt = 0;
    S.conversation = ev.conversation || null;
    S.resume = ev.resume || S.resume;
    S.headSeq = typeof ev.seq === 'number' ? ev.seq : 0;
    saveSession();
    setStatus('online');
    for (const m of S.outbox.values()) transmit(m);  // queued and unacked, same ids
    if (S.handoffQueued) { S.handoffQueued = false; sendFrame({ type: 'handoff.request' }); }
  }
  function onError(ev) {
    const m = ev.id ? S.outbox.get(ev.id) : null;
    if (m) {
      S.outbox.delete(ev.id);
      m.el.dataset.state = 'failed';
      saveSession();
    }
    if (ev.code === 'bad_resume') {
      S.resume = null;
      S.conversation = null;
      resetConversation();
      saveSession();
    }
    if (ev.message || ev.code) systemLine(ev.message || ev.code);
    if (ev.code === 'bad_resume') restartSocket();
    if (ev.code === 'unsupported_version') stop();
  }
  const HANDLERS = {
    ack(ev) {
      const m = S.outbox.get(ev.id);
      if (m) { S.outbox.delete(ev.id); saveSession(); }
      const node = S.byId.get(ev.id);
      if (!node) {
        const added = addMessage('customer', ev.text, { seq: ev.seq, id: ev.id, state: 'sent' });
        if (ev.id) S.byId.set(ev.id, added);
        return;
      }
      node.dataset.state = 'sent';
      node.dataset.seq = ev.seq;
      if (typeof ev.text === 'string') setText(node, ev.text);
      place(node);
    },
    typing(ev, live) { if (live) showTyping(ev.who); },
    'reply.delta'(ev) {
      const key = ev.reply_to || '';
      let node = S.streams.get(key);
      if (!node) {
        node = addMessage('bot', '', { seq: ev.seq, lang: ev.lang, state: 'streaming' });
        S.streams.set(key, node);
        el.log.setAttribute('aria-busy', 'true');
      }
      const stick = nearEnd();
      node.querySelector('.mg-text').textContent += ev.text || '';
      node.dataset.seq = ev.seq;
      if (stick) scrollToEnd();
      hideTyping();
    },
    reply(ev, live) {
      hideTyping();
      const key = ev.reply_to || '';
      let node = S.streams.get(key);
      S.streams.delete(key);
      if (node) {
        setText(node, ev.text);
        node.dataset.seq = ev.seq;
        delete node.dataset.state;
        if (ev.lang) node.lang = ev.lang;
      } else {
        node = addMessage('bot', ev.text, { seq: ev.seq, lang: ev.lang });
      }
      addSources(node, ev.sources, ev.faq_ids);
      disableChoices();
      addChoices(node, ev.choices);
      if (!S.streams.size) el.log.removeAttribute('aria-busy');
      if (nearEnd()) scrollToEnd();
      countUnread(live);
    },
    handoff() { S.handoff = true; renderHeader(); },
    'handoff.cancelled'() {
      S.handoff = false; S.timedOut = false; S.ticketMode = false; renderHeader();
    },
    'handoff.timeout'() { S.timedOut = true; renderHeader(); },
    'agent.joined'(ev) { S.agent = ev.agent || S.ui.agent; renderHeader(); },
    'agent.message'(ev, live) {
      hideTyping();
      addMessage('agent', ev.text, { seq: ev.seq, lang: ev.lang, name: ev.agent || S.agent });
      countUnread(live);
    },
    'agent.left'() { S.agent = null; S.handoff = false; S.timedOut = false; renderHeader(); },
    system(ev) { addMessage('system', ev.text, { seq: ev.seq }); },
  };
  function countUnread(live) {
    if (!live || S.open) return;
    S.unread += 1;
    renderLauncher();
  }
  /** The server started another conversation: its seqs restart, the old log goes. */
  function resetConversation() {
    S.lastSeq = 0;
    S.headSeq = 0;
    S.streams.clear();
    S.handoff = false;
    S.agent = null;
    for (const node of [...el.log.children]) {
      if (node.dataset.state !== 'pending') node.remove();
    }
    el.log.removeAttribute('aria-busy');
    hideTyping();
    renderHeader();
  }

  // -------------------------------------------------------- connection
  function start() {
    S.started = true;
    if (!S.ws && !S.stopped && !S.retryTimer) connect();  // a scheduled retry keeps its backoff
  }
  function connect() {
    clearTimeout(S.retryTimer);
    S.retryTimer = 0;
    if (S.ws || S.stopped) return;
    if (navigator.onLine === false) { setStatus('offline'); return; }  // 'online' event retries
    setStatus(S.attempt ? 'reconnecting' : 'connecting');
    let ws;
    try { ws = new WebSocket(SERVER); } catch (e) { scheduleReconnect(); return; }
    S.ws = ws;
    ws.onopen = () => {
      const hello = { type: 'hello', v: 1, locale: S.locale };
      // Every welcome rotates the token: another tab of this conversation may hold (and
      // have stored) a newer one than ours, which stopped working a minute after it.
      const saved = loadSession();
      if (S.resume && saved.conversation === S.conversation && typeof saved.resume === 'string') {
        S.resume = saved.resume;
      }
      if (S.resume) { hello.resume = S.resume; hello.last_seq = S.lastSeq; }  // 0 after a page load
      sendFrame(hello);
    };
    ws.onmessage = (e) => { if (S.ws === ws) onFrame(e.data); };
    ws.onclose = (e) => onClose(ws, e);
  }
  function onClose(ws, e) {
    if (S.ws !== ws) return;
    S.ws = null;
    S.ready = false;
    hideTyping();
    if (e.code === 1009 && S.outbox.has(S.lastSentId)) {  // that message is too big: don't resend
      const m = S.outbox.get(S.lastSentId);
      S.outbox.delete(m.id);
      m.el.dataset.state = 'failed';
      saveSession();
    }
    if (e.code === 1008) { stop(); return; }  // origin not allowed: retrying cannot help
    if (S.stopped) return;
    const wanted = S.open || S.handoff || S.agent || S.outbox.size;
    if (e.code === 1000 && !wanted) { setStatus('idle'); return; }  // reconnect on next use
    scheduleReconnect();
  }
  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(S.attempt, 10));
    const delay = base / 2 + Math.random() * (base / 2);  // jitter in [base/2, base]
    S.attempt += 1;
    setStatus(navigator.onLine === false ? 'offline' : 'reconnecting');
    clearTimeout(S.retryTimer);
    S.retryTimer = setTimeout(connect, delay);
  }
  /** Drop the current socket and connect again at once (language change, bad_resume). */
  function restartSocket() {
    const ws = S.ws;
    S.ws = null;
    S.ready = false;
    if (ws) ws.close(1000);
    if (S.started) connect();
  }
  function stop() {
    S.stopped = true;
    clearTimeout(S.retryTimer);
    S.retryTimer = 0;
    if (S.ws) { const ws = S.ws; S.ws = null; ws.close(1000); }
    S.ready = false;
    setStatus('offline');
  }
  function sendFrame(frame) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return false;
    S.ws.send(JSON.stringify(frame));
    return true;
  }
  function transmit(m) {
    const frame = { type: 'message', id: m.id, text: m.text };
    if (m.choice) frame.choice = m.choice;
    if (sendFrame(frame)) S.lastSentId = m.id;
  }

  // -------------------------------------------------------- user actions
  function send(text, choice) {
    const clean = String(text == null ? '' : text).trim();
    if (!clean) return false;
    if (S.ticketMode && S.ready && sendFrame({ type: 'ticket', text: clean })) {
      S.ticketMode = false;
      addMessage('customer', clean, { atEnd: true });
      renderHeader();
      return true;
    }
    const id = newId();
    queue(id, clean, typeof choice === 'string' ? choice : undefined);
    start();
    if (S.ready) transmit(S.outbox.get(id));
    return true;
  }
  function queue(id, text, choice) {
    const node = addMessage('customer', text, { id, state: 'pending' });
    S.byId.set(id, node);
    S.outbox.set(id, { id, text, choice, el: node });
    saveSession();
  }
  function startTicket() {
    S.ticketMode = !S.ticketMode;
    renderHeader();
    el.input.focus();
  }
  /** Tell the agent the customer is writing (at most every 3 s; never to the bot). */
  function onInput() {
    autosize();
    const now = Date.now();
    if (S.agent && S.ready && el.input.value && now - S.typingSentAt > 3000) {
      S.typingSentAt = now;
      sendFrame({ type: 'typing' });
    }
  }
  function requestHuman() {
    if (el.human.getAttribute('aria-disabled') === 'true') return;
    start();
    if (!S.ready || !sendFrame({ type: 'handoff.request' })) S.handoffQueued = true;
    else S.handoff = true;
    renderHeader();
  }
  function openPanel(focus) {
    S.open = true;
    S.unread = 0;
    el.panel.hidden = false;
    el.root.dataset.open = 'true';
    sessionSet('mg-chat-open', '1');
    renderLauncher();
    start();
    scrollToEnd();
    if (focus) el.input.focus();
  }
  function closePanel(returnFocus) {
    S.open = false;
    el.panel.hidden = true;
    delete el.root.dataset.open;
    sessionSet('mg-chat-open', '');
    renderLauncher();
    if (returnFocus) el.launcher.focus();
  }
  function onSubmit(e) {
    e.preventDefault();
    if (send(el.input.value)) {
      el.input.value = '';
      autosize();
    }
    el.input.focus();
  }
  function onInputKey(e) {
    // Enter sends; Shift+Enter is a new line; never send while an IME is composing (ja, zh, ko).
    if (e.key !== 'Enter' || e.shiftKey || e.isComposing || e.keyCode === 229) return;
    e.preventDefault();
    el.send.click();
  }
  function onRootKey(e) {
    if (e.key !== 'Escape' || !S.open) return;
    if (el.panel.contains(e.target) || e.target === el.launcher) {
      e.preventDefault();
      closePanel(true);
    }
  }
  function autosize() {
    el.input.style.height = 'auto';
    el.input.style.height = Math.min(el.input.scrollHeight, 140) + 'px';
  }
  function onLanguagePicked() {
    const lang = el.lang.value;
    const locale = reduceLang(S.locale) === lang ? S.locale : lang;
    sessionSet('mg-chat-locale', locale);
    setLanguage(lang, locale);
    if (S.ws) restartSocket();  // the next hello carries the new locale
  }

  // -------------------------------------------------------- start-up
  function init() {
    build();
    loadCss();
    applyStrings();
    setLanguage(S.lang, S.locale);

    const saved = loadSession();
    S.resume = typeof saved.resume === 'string' ? saved.resume : null;
    S.conversation = typeof saved.conversation === 'string' ? saved.conversation : null;
    for (const p of Array.isArray(saved.pending) ? saved.pending : []) {
      if (p && typeof p.id === 'string' && typeof p.text === 'string') {
        queue(p.id, p.text, typeof p.choice === 'string' ? p.choice : undefined);
      }
    }
    // Connect at once only for a conversation that exists; a new one starts on first use.
    if (S.resume || S.outbox.size) start();
    if (attr('open') === 'true' || sessionGet('mg-chat-open') === '1') openPanel(false);

    window.addEventListener('online', () => {
      if (S.started && !S.ws && !S.stopped) { S.attempt = 0; connect(); }
    });
    window.addEventListener('offline', () => { if (!S.ready) setStatus('offline'); });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && S.started && !S.ws && !S.stopped && S.status !== 'idle') connect();
    });
  }

  window.MeridianChat = Object.freeze({
    open() { if (el.root) openPanel(true); },
    close() { if (el.root) closePanel(false); },
    send(text) { return el.root ? send(text) : false; },
  });

  if (document.body) init();
  else document.addEventListener('DOMContentLoaded', init, { once: true });
})();
