// The console's shell: sign-in with an API key (kept in sessionStorage only), the scopes the key
// holds (probed with cheap requests), the language switch (remembered in localStorage), the tabs, and
// the `ctx` every page module receives (see mountDashboard / mountInbox).
import { mountDashboard, strings as dashboardStrings } from './dashboard.js';
import { mountInbox, strings as inboxStrings } from './inbox.js';
import { LOCALES, STRINGS, formatters, translator } from './i18n.js';
import { clear, el } from './dom.js';

const KEY_STORAGE = 'vmc.console.key';     // sessionStorage: this tab only, gone when it closes
const LANG_STORAGE = 'vmc.console.lang';   // localStorage: remembered
const API_PREFIX = '/api/v1';

const STRINGS_ALL = {
  en: { ...STRINGS.en, ...dashboardStrings.en, ...inboxStrings.en },
  km: { ...STRINGS.km, ...dashboardStrings.km, ...inboxStrings.km },
};

// A scope is held unless its probe answers 403. Each probe is the cheapest request the scope guards.
// The analytics probe names a dimension that does not exist: refused (422) after the scope check,
// before the store is read. activities:verify guards no GET, so its probe is a bulk verification whose
// body names no decision and an unknown field: refused (422) after the scope check, deciding nothing.
const PROBES = {
  'analytics:read': { path: '/analytics/overview', query: { group_by: 'scope_probe' } },
  'activities:read': { path: '/activity-types' },
  'activities:verify': { path: '/activities/verifications', method: 'POST', body: { scope_probe: true } },
  'registry:read': { path: '/organizations', query: { limit: 1 } },
};

const TABS = [
  { id: 'dashboard', scopes: ['analytics:read'], mount: mountDashboard },
  { id: 'inbox', scopes: ['activities:read', 'activities:verify'], mount: mountInbox },
];

const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  lang: localStorage.getItem(LANG_STORAGE) === 'km' ? 'km' : 'en',
  scopes: new Set(),
  organizationId: null,
  organizationName: null,
  tab: 'dashboard',
  mounted: [],   // {tab, module} of the mounted page modules
};

/** An Error carrying the problem+json answer and the HTTP status. */
class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** The API with the signed-in key: JSON (or text for CSV) on success, an ApiError otherwise. */
async function api(path, { method = 'GET', body, accept = 'application/json', query } = {}) {
  const url = new URL(API_PREFIX + path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    for (const item of [value].flat()) {
      if (item !== undefined && item !== null && item !== '') url.searchParams.append(name, item);
    }
  }
  const headers = { Authorization: `Bearer ${state.key}`, Accept: accept };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(url, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer',
  });
  const type = response.headers.get('content-type') || '';
  if (!response.ok) {
    const problem = type.includes('json') ? await response.json().catch(() => null) : { detail: await response.text() };
    // A key accepted at sign-in and refused now was revoked (or expired): back to the sign-in form.
    if (response.status === 401 && sessionStorage.getItem(KEY_STORAGE)) signOut('signin.revoked');
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  return type.includes('json') ? response.json() : response.text();
}

/** The scopes of PROBES the key holds; throws the 401 ApiError when the key is not accepted. */
async function probeScopes() {
  const held = new Set();
  const results = await Promise.all(Object.entries(PROBES).map(async ([scope, probe]) => {
    try {
      await api(probe.path, probe);
      return [scope, 'held'];
    } catch (error) {
      if (error.status === 401) throw error;
      return [scope, error.status === 403 ? 'missing' : 'held'];
    }
  }));
  for (const [scope, result] of results) if (result === 'held') held.add(scope);
  return held;
}

/** The key's own organisation: with registry:read, the one organisation of its tree whose parent is
 * outside the tree (none for a national key, which sees every organisation). */
async function findOrganization() {
  if (!state.scopes.has('registry:read')) return;
  try {
    const page = await api('/organizations', { query: { limit: 500 } });
    const ids = new Set(page.items.map((org) => org.id));
    const roots = page.items.filter((org) => !org.parent_id || !ids.has(org.parent_id));
    if (roots.length === 1 && roots[0].parent_id) {
      state.organizationId = roots[0].id;
      state.organizationName = roots[0].name;
    }
  } catch {
    // Not knowing the organisation only hides the line that names it.
  }
}

function ctxFor() {
  return {
    api, t: translator(STRINGS_ALL, state.lang), lang: state.lang, locale: LOCALES[state.lang],
    ...formatters(state.lang),   // formatNumber, formatDate, formatDateTime, formatMonth
    scopes: state.scopes,
    organizationId: state.organizationId,
    onDecided: () => state.mounted.forEach(({ tab, module }) => tab !== 'inbox' && module.refresh()),
  };
}

function unmount() {
  for (const { module } of state.mounted) module.destroy();
  state.mounted = [];
}

function renderChrome(t) {
  document.documentElement.lang = state.lang;
  document.title = t('app.title');
  document.getElementById('title').textContent = t('app.title');
  const langButton = document.getElementById('lang-switch');
  langButton.textContent = t('lang.switch');
  langButton.setAttribute('aria-label', t('lang.switch.label'));
  langButton.lang = state.lang === 'en' ? 'km' : 'en';
  const signOut = document.getElementById('sign-out');
  signOut.textContent = t('signout');
  signOut.hidden = !state.key;
}

function renderSignIn(root, t, message) {
  const input = el('input', { id: 'signin-key', type: 'password', testid: 'signin-key', autocomplete: 'off',
    spellcheck: 'false', required: true, 'aria-describedby': 'signin-help' });
  const status = el('p', { class: 'error', role: 'alert', testid: 'signin-message', text: message || '' });
  const form = el('form', { class: 'card signin', on: { submit: (event) => { event.preventDefault(); signIn(input.value.trim(), status, t); } } },
    el('h2', { text: t('signin.heading') }),
    el('label', { for: 'signin-key', text: t('signin.key') }),
    input,
    el('p', { id: 'signin-help', class: 'note', text: t('signin.help') }),
    el('button', { type: 'submit', class: 'primary', testid: 'signin-submit', text: t('signin.submit') }),
    status);
  root.appendChild(form);
  input.focus();
}

async function signIn(key, status, t) {
  if (!key) return;
  status.textContent = t('signin.checking');
  state.key = key;
  try {
    state.scopes = await probeScopes();
  } catch (error) {
    state.key = null;
    status.textContent = t(error.status === 401 ? 'signin.rejected' : 'signin.unreachable');
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  await findOrganization();
  render();
}

/** Forgets the key; `messageKey` is said on the sign-in form (why the person was signed out). */
function signOut(messageKey) {
  unmount();
  sessionStorage.removeItem(KEY_STORAGE);
  Object.assign(state, { key: null, scopes: new Set(), organizationId: null, organizationName: null });
  render(messageKey);
}

/** Shows tab `id` (moving the focus to it when `focus`, as the arrow keys do). */
function selectTab(id, focus) {
  state.tab = id;
  render();
  if (focus) document.getElementById(`tab-${id}`).focus();
}

function renderTabs(root, t) {
  // The WAI-ARIA tabs pattern: one tab in the Tab order, the arrow keys move between tabs.
  const step = (event) => {
    const moves = { ArrowRight: 1, ArrowLeft: -1 };
    if (!(event.key in moves)) return;
    const index = TABS.findIndex((tab) => tab.id === state.tab);
    selectTab(TABS[(index + moves[event.key] + TABS.length) % TABS.length].id, true);
  };
  const bar = el('div', { class: 'tabs', role: 'tablist', on: { keydown: step } });
  for (const tab of TABS) {
    const selected = tab.id === state.tab;
    bar.appendChild(el('button', {
      type: 'button', role: 'tab', id: `tab-${tab.id}`, testid: `tab-${tab.id}`, 'aria-controls': 'panel',
      'aria-selected': String(selected), tabindex: selected ? '0' : '-1', text: t(`tab.${tab.id}`),
      on: { click: () => selectTab(tab.id, false) },
    }));
  }
  root.appendChild(bar);
  const held = [...state.scopes].sort();
  root.appendChild(el('p', { class: 'note', testid: 'scopes-held',
    text: held.length ? t('scopes.held', { scopes: held.join(', ') }) : t('scopes.none') }));
  if (state.organizationName) {
    root.appendChild(el('p', { class: 'note', testid: 'organization', text: t('organization.known', { name: state.organizationName }) }));
  }
}

function renderPanel(root, t) {
  const tab = TABS.find((candidate) => candidate.id === state.tab);
  const panel = el('section', { id: 'panel', role: 'tabpanel', 'aria-labelledby': `tab-${tab.id}`, testid: `panel-${tab.id}` });
  root.appendChild(panel);
  const missing = tab.scopes.filter((scope) => !state.scopes.has(scope));
  if (missing.length) {
    panel.appendChild(el('p', { class: 'message', role: 'status', testid: 'missing-scope',
      text: t('scope.missing', { scope: missing.join(', ') }) }));
    return;
  }
  state.mounted.push({ tab: tab.id, module: tab.mount(panel, ctxFor()) });
}

/** Draws everything again (after sign-in, sign-out, a tab or a language change): modules are
 * destroyed and mounted anew, so they pick up the new language. */
function render(messageKey) {
  unmount();
  const t = translator(STRINGS_ALL, state.lang);
  renderChrome(t);
  const root = clear(document.getElementById('app'));
  if (!state.key) {
    renderSignIn(root, t, messageKey && t(messageKey));
    return;
  }
  renderTabs(root, t);
  renderPanel(root, t);
}

async function start() {
  document.getElementById('lang-switch').addEventListener('click', () => {
    state.lang = state.lang === 'en' ? 'km' : 'en';
    localStorage.setItem(LANG_STORAGE, state.lang);
    render();
  });
  document.getElementById('sign-out').addEventListener('click', () => signOut());
  if (state.key) {
    try {
      state.scopes = await probeScopes();
      await findOrganization();
    } catch {
      // A refused key has been signed out by api(), which says why; otherwise the server is away.
      if (state.key) signOut('signin.unreachable');
      return;
    }
  }
  render();
}

start();
