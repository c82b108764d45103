// The national dashboard (analytics:read): headline figures and six charts of /api/v1/analytics/*,
// filtered by period, programme, project, organisation and province, polled every few seconds.
import { mountChart } from './charts.js';
import { clear, el } from './dom.js';

export const strings = {
  en: {
    'focus.climate_change': 'Climate change', 'focus.digital_literacy': 'Digital literacy', 'focus.education': 'Education',
    'focus.health': 'Health', 'focus.child_protection': 'Child protection', 'focus.environment': 'Environment',
    'focus.community_development': 'Community development', 'focus.other': 'Other',
    'measure.volunteers.active': 'Volunteers (active there)',
  },
  km: {
    'focus.climate_change': 'ការប្រែប្រួលអាកាសធាតុ', 'focus.digital_literacy': 'អក្ខរកម្មឌីជីថល', 'focus.education': 'ការអប់រំ',
    'focus.health': 'សុខភាព', 'focus.child_protection': 'ការការពារកុមារ', 'focus.environment': 'បរិស្ថាន',
    'focus.community_development': 'ការអភិវឌ្ឍសហគមន៍', 'focus.other': 'ផ្សេងៗ',
    'measure.volunteers.active': 'អ្នកស្ម័គ្រចិត្ត (សកម្មនៅទីនោះ)',
  },
};

export const POLL_SECONDS = 5;
// The analytics service hides cells of fewer than k volunteers (VMC_ANALYTICS_SUPPRESSION_K, 5 by
// default); its answers do not say k, so an answer's own `suppression_k`, if it ever has one, wins.
const DEFAULT_K = 5;
const SEXES = ['female', 'male', 'other', 'undisclosed', 'unknown'];
const AGE_BANDS = ['10-14', '15-17', '18-24', '25-30', '31+', 'unknown'];
const HOURS_BANDS = ['0-19', '20-49', '50+'];
const DEFAULT_INSTRUMENT = 'soft-skills-v1';
const LIST_LIMIT = 500;
const LIST_PAGES = 4;   // at most 2,000 entries in a filter list

// Filters survive a re-mount (a language switch) for the life of the page.
const filters = { from: '', to: '', program: '', project: '', organization: '', province: '', status: 'verified',
  step: 'month', instrument: DEFAULT_INSTRUMENT };

/** Mounts the dashboard in `container`; returns {refresh(), destroy()}. */
export function mountDashboard(container, ctx) {
  const names = { province: new Map(), program: new Map(), project: new Map(), organization: new Map(), activity_type: new Map() };
  const status = el('p', { class: 'note status-line', role: 'status', testid: 'live-status', text: ctx.t('live.waiting') });
  const figures = el('div', { class: 'figures', testid: 'figures' });
  const filterBox = el('form', { class: 'card filters', testid: 'filters', 'aria-label': ctx.t('filters.heading'),
    on: { submit: (event) => event.preventDefault() } });
  const chartBox = el('div', { class: 'charts' });
  container.append(filterBox, status, figures,
    el('p', { class: 'note', text: ctx.t('suppressed.note', { k: DEFAULT_K }) }), chartBox);

  const charts = chartSpecs(ctx, names).map((spec) => ({ spec, chart: mountChart(chartBox, spec, ctx) }));
  let timer = null;
  let running = null;
  let destroyed = false;

  async function refresh() {
    if (destroyed) return;
    if (running) return running;
    running = (async () => {
      try {
        const [overview, ...answers] = await Promise.all([
          ctx.api('/analytics/overview', { query: question() }),
          // Each chart stands alone: one that cannot be answered says so in its own card.
          ...charts.map(({ spec }) => ctx.api(`/analytics/${spec.report}`, { query: spec.query() }).catch((error) => error)),
        ]);
        if (destroyed) return;
        renderFigures(figures, overview, ctx);
        charts.forEach(({ chart }, index) => (answers[index] instanceof Error ? chart.fail(answers[index]) : chart.update(answers[index])));
        status.textContent = ctx.t('live.updated', { time: overview.as_of ? ctx.formatDateTime(overview.as_of) : '—', seconds: POLL_SECONDS });
        status.classList.remove('error');
      } catch (error) {
        if (destroyed) return;
        status.textContent = ctx.t('live.error', { detail: error.message });
        status.classList.add('error');
      } finally {
        running = null;
      }
    })();
    return running;
  }

  function onChange() {
    refresh();
  }

  // Charts are canvases: they draw Khmer with the shipped face only once it is loaded.
  const fontsReady = ctx.lang === 'km' ? document.fonts.load('12px "Noto Sans Khmer"', 'ក').catch(() => null) : null;
  Promise.all([loadNames(ctx, names), fontsReady]).then(() => {
    if (destroyed) return;
    renderFilters(filterBox, ctx, names, onChange);
    refresh();
  });
  timer = setInterval(() => { if (!document.hidden) refresh(); }, POLL_SECONDS * 1000);

  return {
    refresh,
    destroy() {
      destroyed = true;
      clearInterval(timer);
      charts.forEach(({ chart }) => chart.destroy());
      clear(container);
    },
  };
}

/** The question every figure shares: the filters as query parameters of /analytics/*. */
export function question() {
  const query = { status: filters.status };
  for (const name of ['from', 'to', 'program', 'project', 'organization', 'province']) {
    if (filters[name]) query[name] = filters[name];
  }
  return query;
}

function chartSpecs(ctx, names) {
  const t = ctx.t;
  const label = (dim) => (value) => labelOf(dim, value, ctx, names);
  const k = (answer) => answer.suppression_k ?? DEFAULT_K;
  return [
    {
      id: 'province', title: t('chart.province'), report: 'hours', horizontal: true,
      query: () => ({ ...question(), group_by: 'province' }),
      view: (answer) => sortedView(answer, 'province', t('dim.province'), label('province'), [
        ['hours', t('measure.hours')], ['volunteers', t('measure.volunteers.active')]], k(answer)),
    },
    {
      id: 'time', title: t('chart.time'), report: 'hours',
      query: () => ({ ...question(), group_by: filters.step }),
      view: (answer) => {
        const rows = [...answer.rows].sort((a, b) => String(a[filters.step]).localeCompare(String(b[filters.step])));
        return seriesView(rows, filters.step, t(`dim.${filters.step}`), (value) => formatPeriod(value, filters.step, ctx),
          [['hours', t('measure.hours')]], k(answer));
      },
    },
    {
      id: 'sex_age', title: t('chart.sex_age'), report: 'volunteers',
      query: () => ({ ...question(), group_by: 'age_band,sex' }),
      view: (answer) => crossView(answer, 'age_band', 'sex', AGE_BANDS, SEXES, t('dim.age_band'),
        (band) => (band === 'unknown' ? t('age.unknown') : band), (sex) => t(`sex.${sex}`), 'volunteers', k(answer)),
    },
    {
      id: 'activity_type', title: t('chart.activity_type'), report: 'hours', horizontal: true,
      query: () => ({ ...question(), group_by: 'activity_type' }),
      view: (answer) => sortedView(answer, 'activity_type', t('dim.activity_type'), label('activity_type'),
        [['hours', t('measure.hours')]], k(answer)),
    },
    {
      id: 'focus_area', title: t('chart.focus_area'), report: 'hours', horizontal: true,
      query: () => ({ ...question(), group_by: 'focus_area' }),
      view: (answer) => sortedView(answer, 'focus_area', t('dim.focus_area'), label('focus_area'),
        [['hours', t('measure.hours')]], k(answer)),
    },
    {
      id: 'skills', title: t('chart.skills'), report: 'skills',
      // skills answers have no `status`: they count verified hours only.
      query: () => {
        const { status, ...rest } = question();
        return { ...rest, instrument: filters.instrument, group_by: 'hours_band' };
      },
      view: (answer) => {
        const rows = [...answer.rows].sort((a, b) => HOURS_BANDS.indexOf(a.hours_band) - HOURS_BANDS.indexOf(b.hours_band));
        return seriesView(rows, 'hours_band', t('dim.hours_band'), (band) => t('band.hours', { band }),
          [['mean_change', t('measure.mean_change')], ['baseline_mean', t('measure.baseline_mean')],
            ['endline_mean', t('measure.endline_mean')], ['volunteers', t('measure.volunteers'), true]], k(answer));
      },
    },
  ];
}

/** A view of rows in the given order: labels, one series per measure ([measure, label, tableOnly]: a
 * count beside scores is listed in the table, not drawn on the scores' axis), which rows are suppressed. */
function seriesView(rows, dim, categoryLabel, labelFor, measures, k) {
  return {
    categoryLabel, k,
    labels: rows.map((row) => labelFor(row[dim])),
    suppressed: rows.map((row) => row.suppressed === true),
    series: measures.map(([measure, name, tableOnly]) => ({
      label: name, tableOnly, values: rows.map((row) => (row.suppressed ? null : row[measure])),
    })),
  };
}

/** Largest first by the first measure; suppressed rows last (their size is not known). */
function sortedView(answer, dim, categoryLabel, labelFor, measures, k) {
  const first = measures[0][0];
  const rows = [...answer.rows].sort((a, b) => (a.suppressed - b.suppressed) || ((b[first] ?? 0) - (a[first] ?? 0)));
  return seriesView(rows, dim, categoryLabel, labelFor, measures, k);
}

/** Rows of `outer` (in `outerOrder`), one series per value of `inner` present in the answer. */
function crossView(answer, outer, inner, outerOrder, innerOrder, categoryLabel, outerLabel, innerLabel, measure, k) {
  const outers = outerOrder.filter((value) => answer.rows.some((row) => row[outer] === value));
  const inners = innerOrder.filter((value) => answer.rows.some((row) => row[inner] === value));
  const cell = (o, i) => answer.rows.find((row) => row[outer] === o && row[inner] === i);
  return {
    categoryLabel, k,
    labels: outers.map(outerLabel),
    suppressed: outers.map((o) => inners.some((i) => cell(o, i)?.suppressed)),
    series: inners.map((i) => ({
      label: innerLabel(i),
      // A combination absent from the answer had no volunteers: a true zero, unlike a suppressed cell.
      values: outers.map((o) => { const row = cell(o, i); return row ? (row.suppressed ? null : row[measure]) : 0; }),
    })),
  };
}

const FIGURES = [
  ['volunteers', 'figure-volunteers', 'figure.volunteers'],
  ['hours', 'figure-verified-hours', 'figure.hours'],
  ['activities', 'figure-activities', 'figure.activities'],
  ['beneficiaries', 'figure-beneficiaries', 'figure.beneficiaries'],
  ['beneficiaries_children', 'figure-children', 'figure.children'],
];

function renderFigures(box, overview, ctx) {
  const row = overview.rows[0] || {};
  const k = overview.suppression_k ?? DEFAULT_K;
  clear(box).append(...FIGURES.map(([measure, testid, key]) => {
    const hidden = row.suppressed === true || row[measure] === null || row[measure] === undefined;
    const label = measure === 'hours' && filters.status === 'all' ? 'figure.hours.all' : key;
    return el('div', { class: 'figure' },
      el('span', { class: hidden ? 'value suppressed' : 'value', testid,
        text: hidden ? ctx.t('suppressed', { k }) : ctx.formatNumber(row[measure]) }),
      el('span', { class: 'label', text: ctx.t(label) }));
  }));
}

function labelOf(dim, value, ctx, names) {
  if (value === null || value === undefined) return ctx.t('unknown');
  if (dim === 'focus_area') return ctx.t(`focus.${value}`);
  return names[dim]?.get(value) ?? String(value);
}

function formatPeriod(value, step, ctx) {
  if (step !== 'month' || !value) return value ?? ctx.t('unknown');
  return ctx.formatMonth(value);
}

/** Every page of a list (at most LIST_PAGES), or [] when the key may not read it. */
async function listAll(ctx, path, query = {}) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < LIST_PAGES; page += 1) {
    const answer = await ctx.api(path, { query: { ...query, limit: LIST_LIMIT, cursor } });
    items.push(...answer.items);
    cursor = answer.next_cursor;
    if (!cursor) break;
  }
  return items;
}

/** Names of provinces, programmes, projects, organisations and activity types, in the chosen language,
 * from the registry and activities APIs where the key may read them (else their codes and ids). */
async function loadNames(ctx, names) {
  const local = (item, english) => (ctx.lang === 'km' ? item.name_km || item[english] : item[english] || item.name_km);
  const lists = [];
  if (!ctx.scopes.has('registry:read')) {
    // Without the registry, the filters offer the codes and ids the figures themselves carry.
    lists.push(...['program', 'project', 'organization', 'province'].map((dim) => ctx.api('/analytics/hours', {
      query: { status: 'all', group_by: dim } }).then((answer) => answer.rows.forEach((row) => {
      if (row[dim]) names[dim].set(row[dim], row[dim]);
    }))));
  } else {
    lists.push(
      listAll(ctx, '/locations', { level: 'province' }).then((items) => items.forEach((p) => names.province.set(p.code, local(p, 'name_en') || p.code))),
      listAll(ctx, '/programs').then((items) => items.forEach((p) => names.program.set(p.code, local(p, 'name') || p.code))),
      listAll(ctx, '/projects').then((items) => items.forEach((p) => names.project.set(p.id, local(p, 'name') || p.id))),
      listAll(ctx, '/organizations').then((items) => items.forEach((o) => names.organization.set(o.id, local(o, 'name') || o.id))),
    );
  }
  if (ctx.scopes.has('activities:read')) {
    lists.push(
      ctx.api('/activity-types').then((answer) => answer.items.forEach((a) => names.activity_type.set(a.code, local(a, 'name_en')))),
      ctx.api('/assessment-instruments').then((answer) => { names.instruments = answer.items.map((i) => i.code); }),
    );
  }
  await Promise.allSettled(lists);   // a list the key may not read leaves its filter with codes only
}

function renderFilters(form, ctx, names, onChange) {
  const t = ctx.t;
  const field = (name, labelKey, control) => el('label', {}, t(labelKey), control);
  const bind = (control, name) => {
    control.value = filters[name];
    control.addEventListener('change', () => { filters[name] = control.value; onChange(); });
    return control;
  };
  const choice = (name, options) => bind(el('select', { testid: `filter-${name}`, name },
    el('option', { value: '', text: t('filter.any') }),
    [...options].sort((a, b) => a[1].localeCompare(b[1])).map(([value, text]) => el('option', { value, text }))), name);
  const instruments = names.instruments || [DEFAULT_INSTRUMENT];
  clear(form).append(
    field('from', 'filter.from', bind(el('input', { type: 'date', testid: 'filter-from', name: 'from' }), 'from')),
    field('to', 'filter.to', bind(el('input', { type: 'date', testid: 'filter-to', name: 'to' }), 'to')),
    field('program', 'filter.program', choice('program', names.program)),
    field('project', 'filter.project', choice('project', names.project)),
    field('organization', 'filter.organization', choice('organization', names.organization)),
    field('province', 'filter.province', choice('province', names.province)),
    field('status', 'filter.status', bind(el('select', { testid: 'filter-status', name: 'status' },
      el('option', { value: 'verified', text: t('filter.status.verified') }),
      el('option', { value: 'all', text: t('filter.status.all') })), 'status')),
    field('step', 'filter.granularity', bind(el('select', { testid: 'filter-step', name: 'step' },
      el('option', { value: 'month', text: t('filter.month') }),
      el('option', { value: 'week', text: t('filter.week') })), 'step')),
    field('instrument', 'filter.instrument', bind(el('select', { testid: 'filter-instrument', name: 'instrument' },
      instruments.map((code) => el('option', { value: code, text: code }))), 'instrument')),
    el('button', { type: 'button', testid: 'filter-reset', text: t('filter.reset'), on: { click: () => {
      Object.assign(filters, { from: '', to: '', program: '', project: '', organization: '', province: '', status: 'verified' });
      renderFilters(form, ctx, names, onChange);
      onChange();
    } } }),
  );
}
