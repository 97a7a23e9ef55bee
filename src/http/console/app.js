// pgcordon console: approvals, grants and the audit trail, over the admin API.
//
// It holds no power of its own: every action is an admin API call made with the credential
// the user signed in with (an API key or an OIDC token), kept in this tab's sessionStorage.
// Everything shown comes from clients the gateway does not trust (SQL text, user names,
// application names), so text is only ever set with textContent / text nodes, never as HTML.
'use strict';

(() => {
  const CREDENTIAL_KEY = 'pgcordon.credential';
  const REFRESH_MS = 5000;
  const STATUSES = ['pending', 'approved', 'denied', 'expired', 'cancelled', 'all'];

  let credential = sessionStorage.getItem(CREDENTIAL_KEY);
  let me = null;           // GET /api/whoami: {name, groups, auditor}
  let view = 0;            // bumped on every navigation; a late answer for an old view is dropped
  let timers = [];         // the current view's refreshes
  let badgeTimer = null;
  const filters = {approvals: 'pending', grants: 'active', sessions: {user: '', database: '', since: '24h'}};

  const $ = (id) => document.getElementById(id);

  // el('td', {class: 'sql'}, text, child, ...): strings become text nodes, never markup.
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === undefined || kid === null || kid === false) continue;
      e.append(kid instanceof Node ? kid : visible(String(kid)));
    }
    return e;
  }

  // Characters that change how the text around them looks without showing themselves:
  // controls other than newline, carriage return and tab; direction overrides and isolates
  // (a "WHERE" that seems to stand outside a comment but is inside it); zero-width and other
  // invisible characters. A client could use them to make a held statement read as something
  // else, so they are shown as <U+202E>.
  const HIDDEN = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u00ad\u061c\u115f\u1160\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\u3164\ufeff\ufff9-\ufffb\u{e0000}-\u{e007f}]/gu;

  // Text as nodes, with each hidden character a marked token. Never markup.
  function visible(text) {
    if (text.search(HIDDEN) < 0) return document.createTextNode(text); // search ignores lastIndex
    const out = document.createDocumentFragment();
    let at = 0;
    for (const m of text.matchAll(HIDDEN)) {
      out.append(text.slice(at, m.index));
      const code = m[0].codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
      const mark = document.createElement('span');
      mark.className = 'hidden-char';
      mark.title = 'an invisible or direction-changing character';
      mark.textContent = `<U+${code}>`;
      out.append(mark);
      at = m.index + m[0].length;
    }
    out.append(text.slice(at));
    return out;
  }

  function countHidden(text) {
    return typeof text === 'string' ? (text.match(HIDDEN) || []).length : 0;
  }

  // A bound value or a result cell: NULL, the empty string and bytes that are not text are
  // tokens no client-sent string can look like.
  function value(v) {
    if (v === null || v === undefined) return el('span', {class: 'token'}, 'NULL');
    if (v === '') return el('span', {class: 'token'}, 'empty');
    if (typeof v === 'object' && typeof v.hex === 'string' && Object.keys(v).length === 1)
      return el('span', {}, el('span', {class: 'token'}, 'bytes'), ' \\x' + v.hex);
    return el('span', {class: 'value'}, show(v));
  }

  // A value from the API as text: the store writes bytes that are not UTF-8 as {"hex": ...}
  // and a text over the size cap as {"head", "bytes", "sha256"}.
  function show(v) {
    if (v === undefined || v === null || v === '') return '—';
    if (typeof v !== 'object') return String(v);
    if (typeof v.hex === 'string' && Object.keys(v).length === 1) return '\\x' + v.hex;
    if (typeof v.head === 'string' && 'bytes' in v)
      return v.head + `\n[cut: ${v.bytes} bytes in all, sha256 ${v.sha256}]`;
    return JSON.stringify(v);
  }

  // "2026-11-22T10:00:00.123456Z" -> "2026-11-22 10:00:00Z" (the API's times are UTC).
  function when(t) {
    if (typeof t !== 'string') return show(t);
    const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?Z$/.exec(t);
    return m ? `${m[1]} ${m[2]}Z` : t;
  }

  function clip(text, n) {
    const s = show(text);
    return s.length > n ? s.slice(0, n) + '…' : s;
  }

  // Only ids of the API's own form go into links and paths.
  const isId = (id) => typeof id === 'string' && /^[0-9a-f]{16}$/.test(id);

  function statusText(s) {
    return el('span', {class: 'status-' + (typeof s === 'string' ? s.replace(/[^a-z]/g, '') : '')}, show(s));
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = {Authorization: 'Bearer ' + credential};
    let body;
    if (options.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.body);
    }
    let res;
    try {
      res = await fetch(path, {method: options.method || 'GET', headers, body, cache: 'no-store',
                               credentials: 'omit', redirect: 'error'});
    } catch (e) {
      throw new ApiError(0, 'the gateway did not answer (' + e.message + ')');
    }
    let data = null;
    try {
      data = await res.json();
    } catch (e) {
      data = null;
    }
    const message = data && typeof data.error === 'string' ? data.error : `HTTP ${res.status}`;
    if (res.status === 401 && !options.signingIn) {
      signOut('Signed out: ' + message);
      throw new ApiError(401, message);
    }
    if (!res.ok) throw new ApiError(res.status, message);
    return data;
  }

  function banner(text) {
    const b = $('banner');
    b.textContent = text || '';
    b.hidden = !text;
  }

  function stopTimers() {
    timers.forEach(clearInterval);
    timers = [];
  }

  function every(ms, fn) {
    timers.push(setInterval(fn, ms));
  }

  // replaceChildren, leaving out null and false (which it would show as text).
  function fill(parent, ...kids) {
    parent.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
  }

  function render(...nodes) {
    fill($('main'), ...nodes);
  }

  // ---- signing in ----

  function showLogin(message) {
    $('top').hidden = true;
    const input = el('input', {type: 'password', id: 'credential', autocomplete: 'off', required: true,
                               'aria-label': 'API key or OIDC token', size: 60});
    const error = el('p', {class: 'error', id: 'login-error', role: 'alert'}, message || '');
    const form = el('form', {class: 'login', id: 'login'},
      el('h1', {}, 'pgcordon console'),
      el('label', {for: 'credential'}, 'API key or OIDC access token'),
      input,
      el('button', {type: 'submit', class: 'primary'}, 'Sign in'),
      error,
      el('p', {class: 'note'}, 'The credential is sent only to this gateway\'s admin API and is kept in ' +
                                'this tab until you sign out or close it.'));
    const button = form.querySelector('button');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const text = input.value.trim();
      if (!text || button.disabled) return; // one attempt at a time: the answer is this key's
      button.disabled = true;
      error.textContent = '';
      credential = text;
      try {
        me = await api('/api/whoami', {signingIn: true});
      } catch (e) {
        credential = null;
        error.textContent = e.status === 401 ? 'Refused: ' + e.message : e.message;
        button.disabled = false;
        return;
      }
      sessionStorage.setItem(CREDENTIAL_KEY, credential);
      input.value = '';
      signedIn();
    });
    render(form);
    input.focus();
  }

  function signedIn() {
    $('top').hidden = false;
    $('whoami').textContent = me.name + (me.groups.length ? ' (' + me.groups.join(', ') + ')' : '');
    $('nav-sessions').hidden = !me.auditor;
    banner('');
    clearInterval(badgeTimer);
    badgeTimer = setInterval(updateBadge, REFRESH_MS);
    updateBadge();
    route();
  }

  function signOut(message) {
    view++;
    stopTimers();
    clearInterval(badgeTimer);
    sessionStorage.removeItem(CREDENTIAL_KEY);
    credential = null;
    me = null;
    banner('');
    showLogin(message);
  }

  async function updateBadge() {
    if (!credential) return;
    try {
      const d = await api('/api/approvals?status=pending&limit=100');
      const n = d.approvals.length;
      const badge = $('pending-count');
      badge.textContent = n + (d.next ? '+' : '');
      badge.hidden = n === 0;
    } catch (e) {
      // the view in front shows errors; the badge keeps its last count
    }
  }

  // ---- routing: #/approvals, #/approvals/ID, #/grants, #/sessions, #/sessions/ID ----

  function route() {
    view++;
    stopTimers();
    banner('');
    if (!credential || !me) {
      showLogin();
      return;
    }
    const [page, id] = location.hash.replace(/^#\/?/, '').split('/');
    for (const a of document.querySelectorAll('header nav a'))
      a.classList.toggle('current', a.id === 'nav-' + (page || 'approvals'));
    if (page === 'approvals' && id) approvalPage(id);
    else if (page === 'grants') grantsPage();
    else if (page === 'sessions' && id) sessionPage(id);
    else if (page === 'sessions') sessionsPage();
    else approvalsPage();
  }

  // Runs load() now and on every refresh; its answer is drawn only if the view is still
  // current and it changed (draw returns false when it chose not to draw). A refresh waits
  // for the one before it, so answers never cross.
  function loader(load, draw, refresh) {
    const mine = view;
    let busy = false, last = null;
    const run = async () => {
      if (busy) return;
      busy = true;
      try {
        const data = await load();
        const key = JSON.stringify(data);
        if (mine === view && key !== last) {
          banner('');
          if (draw(data) !== false) last = key;
        }
      } catch (e) {
        last = null;
        if (mine === view && e.status !== 401) banner(e.message);
      } finally {
        busy = false;
      }
    };
    run();
    if (refresh) every(REFRESH_MS, run);
  }

  function table(columns, rows, emptyText) {
    if (!rows.length) return el('p', {class: 'note'}, emptyText);
    return el('table', {}, el('thead', {}, el('tr', {}, columns.map((c) => el('th', {}, c)))),
              el('tbody', {}, rows));
  }

  function fields(pairs) {
    return el('dl', {class: 'fields'},
              pairs.filter((p) => p).map(([k, v]) => [el('dt', {}, k), el('dd', {}, v instanceof Node ? v : show(v))]));
  }

  // ---- approvals ----

  function approvalsPage() {
    const status = el('select', {id: 'approval-status'}, STATUSES.map((s) => el('option', {value: s}, s)));
    status.value = filters.approvals;
    status.addEventListener('change', () => {
      filters.approvals = status.value;
      route();
    });
    const list = el('div', {id: 'approvals'});
    render(el('h1', {}, 'Approval requests'),
           el('div', {class: 'toolbar'}, el('label', {}, 'Status', status)), list);
    loader(() => api('/api/approvals?limit=100&status=' + encodeURIComponent(filters.approvals)), (d) => {
      const rows = d.approvals.map((r) => el('tr', {'data-id': r.id},
        el('td', {}, isId(r.id) ? el('a', {href: '#/approvals/' + r.id}, r.id) : show(r.id)),
        el('td', {}, when(r.created)),
        el('td', {}, show(r.requester)),
        el('td', {}, r.kind === 'grant' ? 'grant' : show(r.database)),
        el('td', {class: 'sql'}, r.kind === 'grant' ? show(r.why) : clip(r.statement, 160)),
        el('td', {}, r.kind === 'grant' ? show(r.request_reason) : [show(r.policy), ' / ', show(r.why)]),
        el('td', {}, statusText(r.status)),
        el('td', {}, when(r.status === 'pending' ? r.deadline : r.decided_at))));
      fill(list,
        table(['Request', 'Created', 'Requester', 'Database', 'Statement', 'Why', 'Status', 'Deadline / decided'],
              rows, filters.approvals === 'pending' ? 'Nothing is waiting for a decision.' : 'No requests.'),
        d.next ? el('p', {class: 'note'}, 'Showing the newest 100; the API pages further (?before=' + d.next + ').')
               : null);
    }, true);
  }

  function approvalPage(id) {
    if (!isId(id)) {
      render(el('h1', {}, 'Approval request'), el('p', {class: 'error'}, 'No such approval request.'));
      return;
    }
    const holder = el('div', {});
    render(el('p', {}, el('a', {href: '#/approvals'}, '← Approval requests')), holder);
    loader(() => api('/api/approvals/' + id), (r) => {
      // A reason being typed survives a refresh of a request still pending.
      const typing = holder.querySelector('#reason');
      if (typing && typing.value && r.status === 'pending') return false;
      fill(holder, approvalDetail(r));
    }, true);
  }

  function approvalDetail(r) {
    const out = [el('h1', {}, r.kind === 'grant' ? 'Grant request ' : 'Held statement ', el('code', {}, show(r.id)))];
    const session = isId(r.session_id) && me.auditor
      ? el('a', {href: '#/sessions/' + r.session_id}, r.session_id) : show(r.session_id);
    out.push(fields([
      ['Status', statusText(r.status)],
      ['Requester', show(r.requester) + (Array.isArray(r.groups) && r.groups.length ? ' (' + r.groups.join(', ') + ')' : '')],
      r.kind !== 'grant' && ['Database', r.database],
      r.kind !== 'grant' && ['Session', session],
      r.kind !== 'grant' && ['Policy / rule', show(r.policy) + ' / ' + show(r.rule)],
      ['Why', r.why],
      r.kind === 'grant' && ['Requester\'s reason', r.request_reason],
      r.kind !== 'grant' && ['Mode', r.mode === 'wait' ? 'wait (the client is waiting)' : 'retry (the client runs it again once approved)'],
      ['Approvers', Array.isArray(r.approvers) ? r.approvers.join(', ') : r.approvers],
      ['Created', when(r.created)],
      ['Deadline', when(r.deadline)],
      ['Decided by', r.decided_by],
      ['Decided at', when(r.decided_at)],
      ['Decision reason', r.decision_reason],
      ['Valid until', when(r.valid_until)],
      ['Gateway', r.node],
    ]));
    if (r.kind === 'grant' && r.grant) {
      const g = r.grant;
      out.push(el('h2', {}, 'Grant'), fields([
        [g.user !== null && g.user !== undefined ? 'User' : 'Group', g.user !== null && g.user !== undefined ? g.user : g.group],
        ['Tables', Array.isArray(g.tables) ? g.tables.join(', ') : g.tables],
        ['Access', g.access],
        ['Duration', show(g.duration_s) + ' s'],
      ]));
    } else {
      const text = show(r.statement);
      const lines = text.split('\n').length;
      out.push(el('h2', {}, 'Statement ', el('span', {class: 'note'}, `(${text.length} characters, ${lines} ` +
                                                                     `line${lines === 1 ? '' : 's'}, shown in full)`)));
      const hidden = countHidden(r.statement) + (Array.isArray(r.parameters) ?
        r.parameters.reduce((n, p) => n + countHidden(p), 0) : 0);
      if (hidden)
        out.push(el('p', {class: 'warning', id: 'hidden-warning'},
                    `Careful: ${hidden} invisible or direction-changing character${hidden === 1 ? ' is' : 's are'} ` +
                    'in what the client sent, shown as <U+…>. They can make a statement read as something ' +
                    'other than what runs.'));
      out.push(el('pre', {id: 'statement', class: 'full'}, text));
      if (Array.isArray(r.parameters) && r.parameters.length)
        out.push(el('h2', {}, 'Parameters'),
                 el('ol', {id: 'parameters'}, r.parameters.map((p) => el('li', {}, value(p)))));
    }
    if (r.status === 'pending') {
      const approvers = Array.isArray(r.approvers) ? r.approvers : [];
      if (r.requester === me.name)
        out.push(el('p', {class: 'note', id: 'cannot-decide'}, 'This is your own request: another member of ' +
                                                                 approvers.join(', ') + ' decides it.'));
      else if (!approvers.some((g) => me.groups.includes(g)))
        out.push(el('p', {class: 'note', id: 'cannot-decide'}, 'Only members of ' + approvers.join(', ') +
                                                                 ' decide this request.'));
      else
        out.push(decideForm(r));
    }
    return out;
  }

  function decideForm(r) {
    const reason = el('textarea', {id: 'reason', maxlength: 1000, placeholder: 'Reason (required to deny)'});
    const result = el('p', {class: 'error', id: 'decide-error', role: 'alert'});
    const approve = el('button', {type: 'button', class: 'approve', id: 'approve'}, 'Approve');
    const deny = el('button', {type: 'button', class: 'deny', id: 'deny'}, 'Deny');
    const decide = async (verb) => {
      const text = reason.value.trim();
      if (verb === 'deny' && !text) {
        result.textContent = 'A denial needs a reason.';
        reason.focus();
        return;
      }
      approve.disabled = deny.disabled = true;
      result.textContent = '';
      try {
        await api(`/api/approvals/${r.id}/${verb}`, {method: 'POST', body: text ? {reason: text} : {}});
        reason.value = '';
        route(); // draw the decided request
      } catch (e) {
        if (e.status === 401) return;
        result.textContent = (e.status === 403 ? 'Not allowed: ' : '') + e.message;
        approve.disabled = deny.disabled = false;
      }
    };
    approve.addEventListener('click', () => decide('approve'));
    deny.addEventListener('click', () => decide('deny'));
    return el('div', {class: 'decide'}, el('h2', {}, 'Decision'),
              el('label', {for: 'reason'}, 'Reason'), reason, el('div', {class: 'buttons'}, approve, deny), result);
  }

  // ---- grants ----

  function grantsPage() {
    const status = el('select', {id: 'grant-status'}, ['active', 'all'].map((s) => el('option', {value: s}, s)));
    status.value = filters.grants;
    status.addEventListener('change', () => {
      filters.grants = status.value;
      route();
    });
    const list = el('div', {id: 'grants'});
    render(el('h1', {}, 'Grants'),
           el('p', {class: 'note'}, 'Time-bound access to tables beyond a policy\'s scope, each approved like a ' +
                                     'held statement.'),
           el('div', {class: 'toolbar'}, el('label', {}, 'Show', status)), list, grantForm());
    loader(() => api('/api/grants?status=' + encodeURIComponent(filters.grants)), (d) => {
      const rows = d.grants.map((r) => {
        const g = r.grant || {};
        const who = g.user !== null && g.user !== undefined ? 'user ' + g.user : 'group ' + show(g.group);
        return el('tr', {},
          el('td', {}, isId(r.id) ? el('a', {href: '#/approvals/' + r.id}, r.id) : show(r.id)),
          el('td', {}, who),
          el('td', {}, Array.isArray(g.tables) ? g.tables.join(', ') : show(g.tables)),
          el('td', {}, show(g.access)),
          el('td', {}, statusText(r.active ? 'active' : r.status)),
          el('td', {}, when(r.valid_until)),
          el('td', {}, show(r.requester)),
          el('td', {}, show(r.request_reason)));
      });
      fill(list, table(['Request', 'For', 'Tables', 'Access', 'State', 'Valid until', 'Requester', 'Reason'],
                                 rows, filters.grants === 'active' ? 'No grant is active.' : 'No grants.'));
    }, true);
  }

  // POST /api/grants: a request that the approvers decide (docs/approvals.md, "Grants").
  function grantForm() {
    const kind = el('select', {id: 'grant-kind'}, el('option', {value: 'user'}, 'user'),
                    el('option', {value: 'group'}, 'group'));
    const grantee = el('input', {id: 'grant-name', value: me.name, size: 16, required: true});
    const tables = el('input', {id: 'grant-tables', size: 30, required: true, placeholder: 'public.orders, sales.*'});
    const access = el('select', {id: 'grant-access'}, el('option', {value: 'read'}, 'read'),
                      el('option', {value: 'write'}, 'read and write'));
    const duration = el('input', {id: 'grant-duration', value: '1h', size: 6, required: true});
    const reason = el('input', {id: 'grant-reason', size: 40, maxlength: 1000, required: true});
    const result = el('p', {class: 'error', id: 'grant-error', role: 'alert'});
    const form = el('form', {class: 'toolbar', id: 'grant-form'},
      el('label', {}, 'For', kind), el('label', {}, 'Name', grantee), el('label', {}, 'Tables', tables),
      el('label', {}, 'Access', access), el('label', {}, 'Duration', duration), el('label', {}, 'Reason', reason),
      el('button', {type: 'submit', class: 'primary'}, 'Request'));
    const button = form.querySelector('button');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (button.disabled) return; // a double click asks once
      button.disabled = true;
      result.textContent = '';
      const body = {[kind.value]: grantee.value.trim(), access: access.value, duration: duration.value.trim(),
                    reason: reason.value.trim(),
                    tables: tables.value.split(/[\s,]+/).filter((t) => t)};
      try {
        const r = await api('/api/grants', {method: 'POST', body});
        location.hash = isId(r.id) ? '#/approvals/' + r.id : '#/approvals';
      } catch (e) {
        if (e.status !== 401) result.textContent = e.message;
      }
      button.disabled = false;
    });
    return [el('h2', {}, 'Request a grant'), form, result];
  }

  // ---- sessions (admin.auditors only) ----

  function sessionsPage() {
    const f = filters.sessions;
    const user = el('input', {id: 'filter-user', value: f.user, size: 14});
    const database = el('input', {id: 'filter-database', value: f.database, size: 12});
    const since = el('input', {id: 'filter-since', value: f.since, size: 22, placeholder: '24h, 7d or an ISO time'});
    const form = el('form', {class: 'toolbar', id: 'session-filter'},
      el('label', {}, 'User', user), el('label', {}, 'Database', database), el('label', {}, 'Since', since),
      el('button', {type: 'submit'}, 'Show'));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      filters.sessions = {user: user.value.trim(), database: database.value.trim(), since: since.value.trim()};
      route();
    });
    const list = el('div', {id: 'sessions'});
    render(el('h1', {}, 'Sessions'), form, list);
    const q = new URLSearchParams({limit: '200'});
    for (const k of ['user', 'database', 'since']) if (f[k]) q.set(k, f[k]);
    loader(() => api('/api/sessions?' + q), (d) => {
      const rows = d.sessions.map((s) => el('tr', {},
        el('td', {}, isId(s.session_id) ? el('a', {href: '#/sessions/' + s.session_id}, s.session_id) : show(s.session_id)),
        el('td', {}, when(s.start)),
        el('td', {}, when(s.end)),
        el('td', {}, show(s.user)),
        el('td', {}, show(s.auth_method)),
        el('td', {}, show(s.client_address)),
        el('td', {}, show(s.application_name)),
        el('td', {}, show(s.database)),
        el('td', {}, show(s.statements)),
        el('td', {}, show(s.end_reason))));
      fill(list,
        table(['Session', 'Start', 'End', 'User', 'Auth', 'Client', 'Application', 'Database', 'Statements', 'End reason'],
              rows, 'No sessions match.'),
        rows.length === 200 ? el('p', {class: 'note'}, 'The newest 200; narrow the filter to see others.') : null);
    }, false);
  }

  function sessionPage(id) {
    if (!isId(id)) {
      render(el('h1', {}, 'Session'), el('p', {class: 'error'}, 'No such session.'));
      return;
    }
    const holder = el('div', {});
    const transcript = el('div', {id: 'transcript'});
    const replay = el('button', {type: 'button', id: 'show-transcript'}, 'Show the transcript');
    const mine = view;
    replay.addEventListener('click', async () => {
      replay.disabled = true;
      try {
        const d = await api(`/api/sessions/${id}/replay`);
        if (mine === view) fill(transcript, el('pre', {}, show(d.transcript)));
      } catch (e) {
        if (mine === view) fill(transcript, el('p', {class: 'error'}, e.message));
      }
      replay.disabled = false;
    });
    render(el('p', {}, el('a', {href: '#/sessions'}, '← Sessions')), holder,
           el('h2', {}, 'Transcript'), el('p', {}, replay), transcript);
    loader(() => api('/api/sessions/' + id), (d) => fill(holder, ...sessionDetail(d)), false);
  }

  function sessionDetail(d) {
    const s = d.session;
    const out = [el('h1', {}, 'Session ', el('code', {}, show(s.session_id))), fields([
      ['User', show(s.user) + (s.subject && show(s.subject) !== show(s.user) ? ' (subject ' + show(s.subject) + ')' : '')],
      ['Groups', Array.isArray(s.groups) ? s.groups.join(', ') : s.groups],
      ['Authenticated by', s.auth_method],
      ['Client', show(s.client_address) + (s.client_tls ? ' (TLS)' : '')],
      ['Application', s.application_name],
      ['Database / role', show(s.database) + ' / ' + show(s.role)],
      ['Policies', Array.isArray(s.policies) ? s.policies.join(', ') : s.policies],
      ['Start', when(s.start)],
      ['End', when(s.end)],
      ['End reason', s.end_reason],
      ['Statements', s.statements],
      ['Bytes from client / server', show(s.bytes_from_client) + ' / ' + show(s.bytes_from_server)],
      ['Gateway', s.node],
    ])];
    out.push(el('h2', {}, `Statements (${d.statements.length})`));
    if (!d.statements.length) out.push(el('p', {class: 'note'}, 'No statements.'));
    for (const st of d.statements) out.push(statementCard(st));
    return out;
  }

  function statementCard(st) {
    const dec = st.decision || {};
    const head = el('div', {},
      el('strong', {}, '#' + show(st.n) + (st.part ? '.' + st.part : '')), ' ', when(st.time), ' ',
      statusText(dec.action), dec.policy || dec.rule ? [' (', show(dec.policy), ' / ', show(dec.rule), ')'] : null,
      isId(dec.approval) ? [' approved in ', el('a', {href: '#/approvals/' + dec.approval}, dec.approval)] : null,
      isId(dec.grant) ? [' by grant ', el('a', {href: '#/approvals/' + dec.grant}, dec.grant)] : null,
      st.tag ? [' · ', show(st.tag)] : null,
      st.duration_ms !== undefined ? [' · ', show(st.duration_ms), ' ms'] : null,
      st.withheld ? ' · withheld' : null, st.unanswered ? ' · unanswered' : null);
    const card = el('div', {class: 'card statement', 'data-n': show(st.n)}, head,
                    el('pre', {class: 'sql'}, st.sql === undefined ? '(the text is in part 1)' : show(st.sql)));
    if (Array.isArray(st.params) && st.params.length)
      card.append(el('div', {}, 'Parameters: ', st.params.map((p, i) => [i ? ', ' : '', '$' + (i + 1) + ' = ', value(p)])));
    if (dec.reason) card.append(el('div', {class: 'note'}, 'Decision: ' + show(dec.reason)));
    if (st.error) {
      const e = st.error;
      card.append(el('div', {class: 'error'}, [show(e.severity), ' ', show(e.sqlstate), ': ', show(e.message)],
                     e.detail ? ['\nDETAIL: ', show(e.detail)] : null, e.hint ? ['\nHINT: ', show(e.hint)] : null));
    }
    const res = st.result;
    if (res && Array.isArray(res.columns) && res.columns.length) {
      const rows = (Array.isArray(res.rows) ? res.rows : []).map((row) =>
        el('tr', {}, (Array.isArray(row) ? row : [row]).map((v) => el('td', {}, value(v)))));
      card.append(el('table', {class: 'result'},
        el('thead', {}, el('tr', {}, res.columns.map((c) => el('th', {}, show(c && c.name))))),
        el('tbody', {}, rows)));
      const sent = st.rows_sent !== undefined ? st.rows_sent : rows.length;
      card.append(el('div', {class: 'note'}, `${sent} row${sent === 1 ? '' : 's'} sent` +
                                             (res.truncated ? `; the first ${rows.length} recorded` : '')));
    }
    return card;
  }

  // ---- start ----

  document.addEventListener('DOMContentLoaded', async () => {
    $('sign-out').addEventListener('click', () => signOut('Signed out.'));
    window.addEventListener('hashchange', () => {
      if (me) route();
    });
    if (!credential) {
      showLogin();
      return;
    }
    start();
  });

  // With a credential kept from before a reload. Only a refusal forgets it: a gateway that is
  // restarting or unreachable gets a retry.
  async function start() {
    try {
      me = await api('/api/whoami', {signingIn: true});
    } catch (e) {
      if (e.status === 401) {
        signOut('Signed out: ' + e.message);
        return;
      }
      banner(e.message);
      render(el('p', {}, el('button', {type: 'button', id: 'retry', onclick: () => start()}, 'Try again'), ' ',
                el('button', {type: 'button', onclick: () => signOut('Signed out.')}, 'Sign out')));
      return;
    }
    signedIn();
  }
})();
