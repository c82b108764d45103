// The coordinator's verification inbox (issue 19, point 3): the submitted activities the key may see,
// decided one by one (POST /activities/{id}/verify | /reject) or many at once (POST
// /activities/verifications), on the public API only. Every value from the API is put in as text
// (dom.js), and evidence links are plain <a href> to http(s) URLs the person's browser opens: the
// console never fetches them.
import { el, clear } from './dom.js';

/** The scopes the inbox needs: listing submitted entries reads activities, deciding them verifies. */
const REQUIRED_SCOPES = ['activities:read', 'activities:verify'];
/** Rows asked for per page (the API's maximum is 500; 200 keeps the first paint quick on a phone). */
const PAGE_SIZE = 200;
/** The bulk route takes at most 1000 decisions a request. */
const BULK_MAX = 1000;
const SORTS = {
  'date-desc': (a, b) => compare(b.date, a.date) || compare(b.hours, a.hours),
  'date-asc': (a, b) => compare(a.date, b.date) || compare(a.hours, b.hours),
  'hours-desc': (a, b) => compare(b.hours, a.hours) || compare(b.date, a.date),
  'hours-asc': (a, b) => compare(a.hours, b.hours) || compare(b.date, a.date),
};

export const strings = {
  en: {
    'inbox.title': 'Verification inbox',
    'inbox.intro': 'Submitted activities of the projects your organisation runs, waiting for a decision.',
    'inbox.missingScope': 'This key does not hold {scopes}, so it cannot see or decide submitted activities. '
      + 'Ask an administrator for a key with these scopes.',
    'inbox.filters': 'Filters',
    'inbox.filterProject': 'Project',
    'inbox.allProjects': 'All projects',
    'inbox.filterFrom': 'From',
    'inbox.filterTo': 'To',
    'inbox.filterType': 'Activity type',
    'inbox.allTypes': 'All types',
    'inbox.sort': 'Sort by',
    'inbox.sortDateDesc': 'Date, newest first',
    'inbox.sortDateAsc': 'Date, oldest first',
    'inbox.sortHoursDesc': 'Hours, most first',
    'inbox.sortHoursAsc': 'Hours, fewest first',
    'inbox.refresh': 'Reload',
    'inbox.loading': 'Loading…',
    'inbox.count': '{shown} shown of {loaded} submitted activities loaded',
    'inbox.countMore': '{shown} shown of {loaded} submitted activities loaded; more are waiting',
    'inbox.empty': 'Nothing is waiting for verification.',
    'inbox.elsewhere': 'Not shown: {count}, submitted activities of your volunteers in projects that other organisations '
      + 'run and decide on.',
    'inbox.more': 'Load more',
    'inbox.loadFailed': 'The inbox could not be loaded: {error}',
    'inbox.selectAll': 'Select all shown',
    'inbox.select': 'Select the activity of {what}',
    'inbox.selected': '{count} selected',
    'inbox.bulkReason': 'Reason for rejecting (used where a row has none)',
    'inbox.bulkVerify': 'Verify selected',
    'inbox.bulkReject': 'Reject selected',
    'inbox.nothingSelected': 'Select one or more activities first.',
    'inbox.bulkReasonRequired': 'Give a reason to reject: on each row, or once for all selected.',
    'inbox.bulkSummary': 'Decided: {updated}; already decided: {ignored}; errors: {errors}',
    'inbox.project': 'Project',
    'inbox.volunteer': 'Volunteer',
    'inbox.place': 'Place',
    'inbox.beneficiaries': 'People reached',
    'inbox.beneficiariesValue': 'female {female} · male {male} · other {other} · of whom children {children}',
    'inbox.description': 'Description',
    'inbox.evidence': 'Evidence',
    'inbox.noEvidence': 'none',
    'inbox.notALink': 'not an http(s) link, not opened:',
    'inbox.version': 'Version',
    'inbox.conflict': 'Conflict',
    'inbox.hoursValue': '{hours} h',
    'inbox.approvedHours': 'Approve part: hours (at most {hours})',
    'inbox.verify': 'Verify',
    'inbox.reason': 'Reason for rejecting',
    'inbox.reject': 'Reject',
    'inbox.reasonRequired': 'A reason is required to reject.',
    'inbox.hoursInvalid': 'Approved hours must be more than 0 and at most {hours}, with two decimals at most.',
    'inbox.results': 'Decisions taken',
    'inbox.resultVerified': 'verified',
    'inbox.resultPartial': 'verified, {approved} of {hours} h approved',
    'inbox.resultRejected': 'rejected',
    'inbox.resultAlready': 'already decided so',
    'inbox.resultError': 'not decided: {error}',
  },
  km: {
    'inbox.title': 'ប្រអប់ផ្ទៀងផ្ទាត់',
    'inbox.intro': 'សកម្មភាពដែលបានដាក់ស្នើ នៃគម្រោងដែលអង្គការរបស់អ្នកដំណើរការ កំពុងរង់ចាំការសម្រេច។',
    'inbox.missingScope': 'កូនសោនេះមិនមានសិទ្ធិ {scopes} ទេ ដូច្នេះវាមិនអាចមើល ឬសម្រេចលើសកម្មភាពដែលបានដាក់ស្នើបានទេ។ '
      + 'សូមស្នើកូនសោដែលមានសិទ្ធិទាំងនេះពីអ្នកគ្រប់គ្រង។',
    'inbox.filters': 'តម្រង',
    'inbox.filterProject': 'គម្រោង',
    'inbox.allProjects': 'គម្រោងទាំងអស់',
    'inbox.filterFrom': 'ចាប់ពីថ្ងៃ',
    'inbox.filterTo': 'ដល់ថ្ងៃ',
    'inbox.filterType': 'ប្រភេទសកម្មភាព',
    'inbox.allTypes': 'គ្រប់ប្រភេទ',
    'inbox.sort': 'តម្រៀបតាម',
    'inbox.sortDateDesc': 'កាលបរិច្ឆេទ ថ្មីបំផុតមុន',
    'inbox.sortDateAsc': 'កាលបរិច្ឆេទ ចាស់បំផុតមុន',
    'inbox.sortHoursDesc': 'ម៉ោង ច្រើនបំផុតមុន',
    'inbox.sortHoursAsc': 'ម៉ោង តិចបំផុតមុន',
    'inbox.refresh': 'ផ្ទុកឡើងវិញ',
    'inbox.loading': 'កំពុងផ្ទុក…',
    'inbox.count': 'បង្ហាញ {shown} ក្នុងចំណោមសកម្មភាពដែលបានដាក់ស្នើ {loaded} ដែលបានផ្ទុក',
    'inbox.countMore': 'បង្ហាញ {shown} ក្នុងចំណោមសកម្មភាពដែលបានដាក់ស្នើ {loaded} ដែលបានផ្ទុក នៅមានបន្ថែមទៀតកំពុងរង់ចាំ',
    'inbox.empty': 'គ្មានអ្វីរង់ចាំការផ្ទៀងផ្ទាត់ទេ។',
    'inbox.elsewhere': 'មិនបង្ហាញ៖ {count} សកម្មភាពដែលបានដាក់ស្នើ របស់អ្នកស្ម័គ្រចិត្តរបស់អ្នក ក្នុងគម្រោងដែលអង្គការផ្សេងដំណើរការ '
      + 'និងជាអ្នកសម្រេច។',
    'inbox.more': 'ផ្ទុកបន្ថែម',
    'inbox.loadFailed': 'មិនអាចផ្ទុកប្រអប់បានទេ៖ {error}',
    'inbox.selectAll': 'ជ្រើសរើសទាំងអស់ដែលបង្ហាញ',
    'inbox.select': 'ជ្រើសរើសសកម្មភាព {what}',
    'inbox.selected': 'បានជ្រើសរើស {count}',
    'inbox.bulkReason': 'មូលហេតុនៃការបដិសេធ (ប្រើនៅពេលជួរមួយគ្មានមូលហេតុ)',
    'inbox.bulkVerify': 'ផ្ទៀងផ្ទាត់ដែលបានជ្រើសរើស',
    'inbox.bulkReject': 'បដិសេធដែលបានជ្រើសរើស',
    'inbox.nothingSelected': 'សូមជ្រើសរើសសកម្មភាពមួយ ឬច្រើនជាមុនសិន។',
    'inbox.bulkReasonRequired': 'សូមផ្តល់មូលហេតុដើម្បីបដិសេធ៖ នៅលើជួរនីមួយៗ ឬម្តងសម្រាប់ទាំងអស់ដែលបានជ្រើសរើស។',
    'inbox.bulkSummary': 'បានសម្រេច៖ {updated}; បានសម្រេចរួចហើយ៖ {ignored}; កំហុស៖ {errors}',
    'inbox.project': 'គម្រោង',
    'inbox.volunteer': 'អ្នកស្ម័គ្រចិត្ត',
    'inbox.place': 'ទីកន្លែង',
    'inbox.beneficiaries': 'អ្នកទទួលផល',
    'inbox.beneficiariesValue': 'ស្រី {female} · ប្រុស {male} · ផ្សេងទៀត {other} · ក្នុងនោះកុមារ {children}',
    'inbox.description': 'ការពិពណ៌នា',
    'inbox.evidence': 'ភស្តុតាង',
    'inbox.noEvidence': 'គ្មាន',
    'inbox.notALink': 'មិនមែនជាតំណ http(s) ទេ មិនបើកទេ៖',
    'inbox.version': 'កំណែ',
    'inbox.conflict': 'ជម្លោះ',
    'inbox.hoursValue': '{hours} ម៉ោង',
    'inbox.approvedHours': 'អនុម័តមួយផ្នែក៖ ម៉ោង (យ៉ាងច្រើន {hours})',
    'inbox.verify': 'ផ្ទៀងផ្ទាត់',
    'inbox.reason': 'មូលហេតុនៃការបដិសេធ',
    'inbox.reject': 'បដិសេធ',
    'inbox.reasonRequired': 'ត្រូវការមូលហេតុដើម្បីបដិសេធ។',
    'inbox.hoursInvalid': 'ម៉ោងដែលអនុម័តត្រូវតែលើសពី ០ និងមិនលើស {hours} ដោយមានខ្ទង់ទសភាគយ៉ាងច្រើនពីរ។',
    'inbox.results': 'ការសម្រេចដែលបានធ្វើ',
    'inbox.resultVerified': 'បានផ្ទៀងផ្ទាត់',
    'inbox.resultPartial': 'បានផ្ទៀងផ្ទាត់ អនុម័ត {approved} ក្នុងចំណោម {hours} ម៉ោង',
    'inbox.resultRejected': 'បានបដិសេធ',
    'inbox.resultAlready': 'បានសម្រេចដូច្នេះរួចហើយ',
    'inbox.resultError': 'មិនបានសម្រេច៖ {error}',
  },
};

function compare(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The link element of inbox.css, added once to the document (the CSP allows stylesheets of 'self'). */
function ensureStylesheet() {
  if (document.querySelector('link[data-inbox-css]')) return;
  const link = el('link', { rel: 'stylesheet', href: new URL('./inbox.css', import.meta.url).href, 'data-inbox-css': '' });
  document.head.appendChild(link);
}

/** An evidence URL as a link when it is http(s) (opened by the person's browser, with no referrer and no
 * access to this page), otherwise as inert text: the API refuses other schemes, this is the second lock. */
function evidenceNode(url, t) {
  let parsed = null;
  try {
    parsed = new URL(String(url));
  } catch {
    parsed = null;
  }
  if (parsed && (parsed.protocol === 'http:' || parsed.protocol === 'https:')) {
    return el('a', {
      href: parsed.href, rel: 'noopener noreferrer', target: '_blank', referrerpolicy: 'no-referrer',
      class: 'inbox-evidence-link', testid: 'inbox-evidence-link', text: shorten(parsed.host + parsed.pathname),
      title: parsed.href,
    });
  }
  return el('span', { class: 'inbox-evidence-inert', testid: 'inbox-evidence-inert' }, t('inbox.notALink'), ' ', String(url));
}

function shorten(text, max = 60) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** What a rejected API call says, for a person: the problem's field messages, else its detail or title. */
function problemText(error) {
  const problem = error && error.problem;
  if (problem && Array.isArray(problem.errors) && problem.errors.length) {
    return problem.errors.map((e) => String(e.msg)).join('; ');
  }
  if (problem && (problem.detail || problem.title)) return String(problem.detail || problem.title);
  return String((error && error.message) || error);
}

/** An item error of the bulk summary as text. */
function itemErrorText(item) {
  return (item.errors || []).map((e) => String(e.msg)).join('; ') || String(item.status);
}

const KHMER_DIGITS = '០១២៣៤៥៦៧៨៩';
const HOURS_TYPED = /^[0-9]{1,2}(\.[0-9]{1,2})?$/;

/** Approved hours typed in a row: null for "all of them", a number, or an error message. A text field,
 * not a number one: a number field reads "1,5" (or Khmer digits) as empty, which would approve every
 * hour claimed; here a decimal comma and Khmer digits are read, anything else is refused. */
function approvedHours(input, claimed, t, formatNumber) {
  const typed = [...input.value.trim()].map((ch) => {
    const khmer = KHMER_DIGITS.indexOf(ch);
    return khmer >= 0 ? String(khmer) : ch === ',' ? '.' : ch;
  }).join('');
  if (typed === '') return { value: null };
  const value = Number(typed);
  if (!HOURS_TYPED.test(typed) || value <= 0 || value > claimed) {
    return { error: t('inbox.hoursInvalid', { hours: formatNumber(claimed) }) };
  }
  return { value };
}

export function mountInbox(container, ctx) {
  const { t } = ctx;
  ensureStylesheet();
  const missing = ctx.scopes ? REQUIRED_SCOPES.filter((scope) => !ctx.scopes.has(scope)) : [];
  if (missing.length) return mountMissingScope(container, t, missing);
  const inbox = new Inbox(container, ctx);
  inbox.load();
  return { refresh: () => inbox.load(), destroy: () => inbox.destroy() };
}

function mountMissingScope(container, t, missing) {
  clear(container);
  container.appendChild(el('section', { class: 'inbox card', testid: 'inbox' },
    el('h2', { text: t('inbox.title') }),
    el('p', { class: 'inbox-missing-scope', testid: 'inbox-missing-scope', role: 'alert',
      text: t('inbox.missingScope', { scopes: missing.join(', ') }) })));
  return { refresh() {}, destroy() { clear(container); } };
}

/** The inbox's state and its DOM. Rows keep their element (and what was typed in it) across re-sorts. */
class Inbox {
  constructor(container, ctx) {
    this.container = container;
    this.ctx = ctx;
    this.t = ctx.t;
    this.rows = new Map(); // id -> {activity, node, inputs}
    this.cursor = null;
    this.generation = 0; // a newer load makes the answers of older ones stale
    this.elsewhere = 0; // loaded entries the key may read but not decide (left out)
    this.destroyed = false;
    this.projects = new Map(); // id -> project (or null when the key cannot read it)
    this.types = new Map(); // code -> activity type
    this.build();
    this.loadTypes();
  }

  destroy() {
    this.destroyed = true;
    clear(this.container);
  }

  // ---- the page ------------------------------------------------------------------------------
  build() {
    const { t } = this;
    this.projectSelect = el('select', { testid: 'inbox-filter-project', on: { change: () => this.load() } },
      el('option', { value: '', text: t('inbox.allProjects') }));
    this.fromInput = el('input', { type: 'date', testid: 'inbox-filter-from', on: { change: () => this.load() } });
    this.toInput = el('input', { type: 'date', testid: 'inbox-filter-to', on: { change: () => this.load() } });
    this.typeSelect = el('select', { testid: 'inbox-filter-type', on: { change: () => this.render() } },
      el('option', { value: '', text: t('inbox.allTypes') }));
    this.sortSelect = el('select', { testid: 'inbox-sort', on: { change: () => this.render() } },
      ...[['date-desc', 'inbox.sortDateDesc'], ['date-asc', 'inbox.sortDateAsc'], ['hours-desc', 'inbox.sortHoursDesc'],
        ['hours-asc', 'inbox.sortHoursAsc']].map(([value, key]) => el('option', { value, text: t(key) })));
    this.selectAll = el('input', { type: 'checkbox', testid: 'inbox-select-all', on: { change: () => this.toggleAll() } });
    this.selectedCount = el('span', { class: 'inbox-selected-count', testid: 'inbox-selected-count' });
    this.bulkReason = el('input', { type: 'text', maxlength: 2000, testid: 'inbox-bulk-reason' });
    this.status = el('p', { class: 'inbox-status', testid: 'inbox-status', role: 'status' });
    this.elsewhereNote = el('p', { class: 'note', testid: 'inbox-elsewhere', hidden: true });
    this.list = el('ul', { class: 'inbox-list', testid: 'inbox-list' });
    this.more = el('button', { type: 'button', class: 'inbox-more', testid: 'inbox-more', hidden: true,
      text: t('inbox.more'), on: { click: () => this.loadPage(this.generation) } });
    this.results = el('ol', { class: 'inbox-results-list', testid: 'inbox-results' });
    this.resultsSection = el('section', { class: 'inbox-results', hidden: true },
      el('h3', { text: t('inbox.results') }), this.results);

    clear(this.container);
    this.container.appendChild(el('section', { class: 'inbox card', testid: 'inbox' },
      el('h2', { text: t('inbox.title') }),
      el('p', { class: 'inbox-intro', text: t('inbox.intro') }),
      el('fieldset', { class: 'inbox-filters', testid: 'inbox-filters' },
        el('legend', { text: t('inbox.filters') }),
        labelled(t('inbox.filterProject'), this.projectSelect),
        labelled(t('inbox.filterFrom'), this.fromInput),
        labelled(t('inbox.filterTo'), this.toInput),
        labelled(t('inbox.filterType'), this.typeSelect),
        labelled(t('inbox.sort'), this.sortSelect),
        el('button', { type: 'button', testid: 'inbox-refresh', text: t('inbox.refresh'), on: { click: () => this.load() } })),
      el('div', { class: 'inbox-bulk', testid: 'inbox-bulk' },
        el('label', { class: 'inbox-check' }, this.selectAll, ' ', t('inbox.selectAll')),
        this.selectedCount,
        labelled(t('inbox.bulkReason'), this.bulkReason),
        el('button', { type: 'button', class: 'primary', testid: 'inbox-bulk-verify', text: t('inbox.bulkVerify'),
          on: { click: () => this.decideSelected('verify') } }),
        el('button', { type: 'button', class: 'danger', testid: 'inbox-bulk-reject', text: t('inbox.bulkReject'),
          on: { click: () => this.decideSelected('reject') } })),
      this.status, this.elsewhereNote, this.list, this.more, this.resultsSection));
    this.updateSelection();
  }

  // ---- loading -------------------------------------------------------------------------------
  /** The first page again, with the filters the API applies (project, dates); type and order are local. */
  load() {
    this.generation += 1;
    this.cursor = null;
    this.elsewhere = 0;
    for (const row of this.rows.values()) row.node.remove();
    this.rows.clear();
    return this.loadPage(this.generation);
  }

  async loadPage(generation) {
    this.say(this.t('inbox.loading'));
    this.more.disabled = true;
    const query = { status: 'submitted', limit: PAGE_SIZE };
    if (this.projectSelect.value) query.project_id = this.projectSelect.value;
    if (this.fromInput.value) query.from = this.fromInput.value;
    if (this.toInput.value) query.to = this.toInput.value;
    if (this.cursor) query.cursor = this.cursor;
    let page;
    try {
      page = await this.ctx.api('/activities', { query });
    } catch (error) {
      if (!this.current(generation)) return;
      this.more.disabled = false;
      this.say(this.t('inbox.loadFailed', { error: problemText(error) }), true);
      return;
    }
    if (!this.current(generation)) return;
    const waiting = page.items.filter((a) => a.status === 'submitted' && !this.rows.has(a.id));
    const decidable = await this.decidable(waiting);
    if (!this.current(generation)) return;
    this.cursor = page.next_cursor || null;
    for (const activity of waiting) {
      if (decidable.has(activity.id)) this.rows.set(activity.id, this.makeRow(activity));
      else this.elsewhere += 1;
    }
    this.render();
    this.learnProjects(page.items.map((a) => a.project_id));
  }

  /** The ids among `activities` this key may decide, asked of the API itself with a dry run of the bulk
   * route (it checks every decision and takes none): the list also holds entries the key may only read,
   * those of its volunteers in projects other organisations run, which the inbox leaves out. */
  async decidable(activities) {
    const ids = activities.map((a) => a.id);
    if (!ids.length) return new Set();
    const items = ids.map((id) => ({ id, decision: 'verify' }));
    try {
      const summary = await this.ctx.api('/activities/verifications', { method: 'POST', query: { dry_run: 'true' }, body: { items } });
      return new Set(summary.items.filter((item) => item.status !== 'error').map((item) => ids[item.index]));
    } catch {
      return new Set(ids); // unknown: shown, and the API still refuses what the key may not decide
    }
  }

  current(generation) {
    return !this.destroyed && generation === this.generation;
  }

  async loadTypes() {
    try {
      const page = await this.ctx.api('/activity-types', { query: { limit: 500 } });
      for (const type of page.items) this.types.set(type.code, type);
    } catch {
      return; // codes are shown instead of names
    }
    if (this.destroyed) return;
    const chosen = this.typeSelect.value;
    for (const type of [...this.types.values()].sort((a, b) => compare(this.typeName(a.code), this.typeName(b.code)))) {
      this.typeSelect.appendChild(el('option', { value: type.code, text: this.typeName(type.code) }));
    }
    this.typeSelect.value = chosen;
    for (const row of this.rows.values()) row.typeNode.textContent = this.typeName(row.activity.activity_type);
  }

  /** Project names when the key may read projects (registry:read); otherwise their ids stay shown. */
  async learnProjects(ids) {
    const canRead = !this.ctx.scopes || this.ctx.scopes.has('registry:read');
    for (const id of new Set(ids)) {
      if (this.projects.has(id)) continue;
      this.projects.set(id, null);
      if (canRead) {
        try {
          this.projects.set(id, await this.ctx.api(`/projects/${encodeURIComponent(id)}`));
        } catch {
          // the id stays shown
        }
      }
      if (this.destroyed) return;
      this.showProject(id);
    }
  }

  showProject(id) {
    const name = this.projectName(id);
    let option = [...this.projectSelect.options].find((o) => o.value === id);
    if (!option) {
      option = el('option', { value: id });
      this.projectSelect.appendChild(option);
    }
    option.textContent = name;
    for (const row of this.rows.values()) if (row.activity.project_id === id) row.projectNode.textContent = name;
  }

  projectName(id) {
    const project = this.projects.get(id);
    if (!project) return String(id);
    return String((this.ctx.lang === 'km' && project.name_km) || project.name);
  }

  typeName(code) {
    const type = this.types.get(code);
    if (!type) return String(code);
    return String((this.ctx.lang === 'km' && type.name_km) || type.name_en);
  }

  // ---- rows ----------------------------------------------------------------------------------
  makeRow(a) {
    const { t } = this;
    const { formatNumber, formatDate } = this.ctx;
    const b = a.beneficiaries || {};
    const inputs = {
      select: el('input', { type: 'checkbox', testid: 'inbox-select',
        'aria-label': t('inbox.select', { what: `${formatDate(a.date)}, ${this.typeName(a.activity_type)}` }),
        on: { change: () => this.updateSelection() } }),
      approved: el('input', { type: 'text', inputmode: 'decimal', autocomplete: 'off', placeholder: formatNumber(a.hours),
        testid: 'inbox-approved-hours' }),
      reason: el('input', { type: 'text', maxlength: 2000, testid: 'inbox-reason' }),
      verify: el('button', { type: 'button', class: 'primary', testid: 'inbox-verify', text: t('inbox.verify') }),
      reject: el('button', { type: 'button', class: 'danger', testid: 'inbox-reject', text: t('inbox.reject') }),
    };
    const error = el('p', { class: 'inbox-row-error', testid: 'inbox-row-error', role: 'alert', hidden: true });
    const typeNode = el('span', { class: 'inbox-type', testid: 'inbox-type', text: this.typeName(a.activity_type) });
    const projectNode = el('dd', { testid: 'inbox-project', text: this.projectName(a.project_id) });
    const evidence = (a.evidence_urls || []).map((url) => el('li', {}, evidenceNode(url, t)));
    const node = el('li', { class: 'inbox-row', testid: 'inbox-row', 'data-activity-id': a.id },
      el('div', { class: 'inbox-row-head' },
        el('label', { class: 'inbox-check' }, inputs.select),
        el('span', { class: 'inbox-date', testid: 'inbox-date', text: formatDate(a.date) }),
        typeNode,
        el('span', { class: 'inbox-hours', testid: 'inbox-hours', text: t('inbox.hoursValue', { hours: formatNumber(a.hours) }) })),
      el('dl', { class: 'inbox-facts' },
        el('dt', { text: t('inbox.project') }), projectNode,
        el('dt', { text: t('inbox.volunteer') }), el('dd', { class: 'inbox-id', title: a.volunteer_id, text: String(a.volunteer_id).slice(0, 8) }),
        el('dt', { text: t('inbox.place') }), el('dd', { text: a.location_code }),
        el('dt', { text: t('inbox.beneficiaries') }), el('dd', { text: t('inbox.beneficiariesValue', {
          female: formatNumber(b.female || 0), male: formatNumber(b.male || 0), other: formatNumber(b.other || 0),
          children: formatNumber(b.children || 0) }) }),
        a.description ? [el('dt', { text: t('inbox.description') }),
          el('dd', { class: 'inbox-description', testid: 'inbox-description', text: a.description })] : null,
        el('dt', { text: t('inbox.evidence') }),
        el('dd', { testid: 'inbox-evidence' }, evidence.length ? el('ul', { class: 'inbox-evidence' }, evidence) : t('inbox.noEvidence')),
        a.version > 1 ? [el('dt', { text: t('inbox.version') }), el('dd', { text: formatNumber(a.version) })] : null,
        a.conflict ? [el('dt', { text: t('inbox.conflict') }), el('dd', { class: 'inbox-conflict', text: a.conflict })] : null),
      el('div', { class: 'inbox-actions' },
        el('div', { class: 'inbox-action' },
          labelled(t('inbox.approvedHours', { hours: formatNumber(a.hours) }), inputs.approved), inputs.verify),
        el('div', { class: 'inbox-action' }, labelled(t('inbox.reason'), inputs.reason), inputs.reject)),
      error);
    const row = { activity: a, node, inputs, error, typeNode, projectNode };
    inputs.verify.addEventListener('click', () => this.decideOne(row, 'verify'));
    inputs.reject.addEventListener('click', () => this.decideOne(row, 'reject'));
    return row;
  }

  /** The loaded rows of the chosen type, in the chosen order (what the API cannot filter or sort by). */
  shown() {
    const type = this.typeSelect.value;
    return [...this.rows.values()]
      .filter((row) => !type || row.activity.activity_type === type)
      .sort((x, y) => SORTS[this.sortSelect.value](x.activity, y.activity));
  }

  render() {
    const shown = this.shown();
    this.list.replaceChildren(...shown.map((row) => row.node));
    const visible = new Set(shown);
    for (const row of this.rows.values()) if (!visible.has(row)) row.inputs.select.checked = false;
    this.more.hidden = !this.cursor;
    this.more.disabled = false;
    if (!this.rows.size && !this.cursor) this.say(this.t('inbox.empty'));
    else this.say(this.t(this.cursor ? 'inbox.countMore' : 'inbox.count', {
      shown: this.ctx.formatNumber(shown.length), loaded: this.ctx.formatNumber(this.rows.size) }));
    this.elsewhereNote.textContent = this.elsewhere ? this.t('inbox.elsewhere', { count: this.ctx.formatNumber(this.elsewhere) }) : '';
    this.elsewhereNote.hidden = !this.elsewhere;
    this.updateSelection();
  }

  say(text, isError = false) {
    this.status.textContent = text;
    this.status.classList.toggle('inbox-status-error', isError);
  }

  selected() {
    return this.shown().filter((row) => row.inputs.select.checked);
  }

  toggleAll() {
    for (const row of this.shown()) row.inputs.select.checked = this.selectAll.checked;
    this.updateSelection();
  }

  updateSelection() {
    const count = this.selected().length;
    this.selectedCount.textContent = this.t('inbox.selected', { count: this.ctx.formatNumber(count) });
    this.selectAll.checked = count > 0 && count === this.list.children.length;
  }

  rowError(row, text) {
    row.error.textContent = text || '';
    row.error.hidden = !text;
  }

  /** A decided row leaves the inbox (the caller renders once); what was decided is listed under "Decisions taken". */
  decided(row, outcome) {
    this.rows.delete(row.activity.id);
    row.node.remove();
    this.report(row.activity, outcome, 'ok');
  }

  report(activity, outcome, status) {
    const { formatDate, formatNumber } = this.ctx;
    const what = `${formatDate(activity.date)} · ${this.typeName(activity.activity_type)} · `
      + `${this.t('inbox.hoursValue', { hours: formatNumber(activity.hours) })} · ${this.projectName(activity.project_id)}`;
    this.results.prepend(el('li', { class: `inbox-result inbox-result-${status}`, testid: 'inbox-result',
      'data-status': status, 'data-activity-id': activity.id }, `${what}: ${outcome}`));
    this.resultsSection.hidden = false;
  }

  outcomeText(decision, answer) {
    const { formatNumber } = this.ctx;
    if (decision === 'reject') return this.t('inbox.resultRejected');
    if (answer && answer.approved_hours !== null && answer.approved_hours !== undefined && answer.approved_hours < answer.hours) {
      return this.t('inbox.resultPartial', { approved: formatNumber(answer.approved_hours), hours: formatNumber(answer.hours) });
    }
    return this.t('inbox.resultVerified');
  }

  /** The body of a decision on one row, or the message saying why it cannot be sent. */
  decisionOf(row, decision, fallbackReason = '') {
    if (decision === 'reject') {
      const reason = row.inputs.reason.value.trim() || fallbackReason.trim();
      return reason ? { body: { reason } } : { error: this.t('inbox.reasonRequired') };
    }
    const hours = approvedHours(row.inputs.approved, row.activity.hours, this.t, this.ctx.formatNumber);
    if (hours.error) return { error: hours.error };
    return { body: hours.value === null ? {} : { approved_hours: hours.value } };
  }

  // ---- decisions -----------------------------------------------------------------------------
  async decideOne(row, decision) {
    const checked = this.decisionOf(row, decision);
    this.rowError(row, checked.error);
    if (checked.error) return;
    setDisabled(row, true);
    try {
      const answer = await this.ctx.api(`/activities/${encodeURIComponent(row.activity.id)}/${decision}`,
        { method: 'POST', body: checked.body });
      if (this.destroyed) return;
      this.decided(row, this.outcomeText(decision, answer));
      this.render();
      this.ctx.onDecided();
    } catch (error) {
      if (this.destroyed) return;
      setDisabled(row, false);
      this.rowError(row, problemText(error));
    }
  }

  /** Every selected row decided the same way through the bulk route, 1000 a request, each item's fate
   * shown: decided and already-decided rows leave, rows in error stay with the API's message. */
  async decideSelected(decision) {
    const rows = this.selected();
    if (!rows.length) {
      this.say(this.t('inbox.nothingSelected'), true);
      return;
    }
    const checked = rows.map((row) => ({ row, ...this.decisionOf(row, decision, this.bulkReason.value) }));
    const refused = checked.filter((c) => c.error);
    for (const c of checked) this.rowError(c.row, c.error);
    if (refused.length) {
      this.say(decision === 'reject' && !this.bulkReason.value.trim() ? this.t('inbox.bulkReasonRequired') : refused[0].error, true);
      return;
    }
    const tally = { updated: 0, ignored: 0, errors: 0 };
    for (let start = 0; start < checked.length; start += BULK_MAX) {
      const chunk = checked.slice(start, start + BULK_MAX);
      if (!(await this.sendBulk(chunk, decision, tally))) return;
    }
    this.say(this.t('inbox.bulkSummary', {
      updated: this.ctx.formatNumber(tally.updated), ignored: this.ctx.formatNumber(tally.ignored),
      errors: this.ctx.formatNumber(tally.errors) }), tally.errors > 0);
    if (tally.updated) this.ctx.onDecided();
  }

  async sendBulk(chunk, decision, tally) {
    for (const c of chunk) setDisabled(c.row, true);
    const items = chunk.map((c) => ({ id: c.row.activity.id, decision, ...c.body }));
    let summary;
    try {
      summary = await this.ctx.api('/activities/verifications', { method: 'POST', body: { items } });
    } catch (error) {
      if (this.destroyed) return false;
      for (const c of chunk) setDisabled(c.row, false);
      this.say(problemText(error), true);
      return false;
    }
    if (this.destroyed) return false;
    for (const item of summary.items) {
      const { row } = chunk[item.index];
      if (item.status === 'error') {
        tally.errors += 1;
        setDisabled(row, false);
        this.rowError(row, itemErrorText(item));
        this.report(row.activity, this.t('inbox.resultError', { error: itemErrorText(item) }), 'error');
      } else {
        tally[item.status === 'updated' ? 'updated' : 'ignored'] += 1;
        const body = chunk[item.index].body;
        const answer = { ...row.activity, approved_hours: body.approved_hours ?? null };
        this.decided(row, item.status === 'updated' ? this.outcomeText(decision, answer) : this.t('inbox.resultAlready'));
      }
    }
    this.render();
    return true;
  }
}

function labelled(text, control) {
  return el('label', { class: 'inbox-field' }, el('span', { text }), control);
}

function setDisabled(row, disabled) {
  for (const control of Object.values(row.inputs)) control.disabled = disabled;
}
