// One dashboard chart: a Chart.js canvas (role="img", described in words), the same figures as a data
// table (the accessible and exact form, where a suppressed cell reads "fewer than 5"), and a CSV
// download that is the API's own CSV for the same question.
import './vendor/chart.umd.min.js';
import { clear, el } from './dom.js';

const Chart = globalThis.Chart;
// Canvas text does not fall back like HTML text: without the shipped Khmer face in the list, Khmer
// labels are drawn as empty boxes on a machine that has no Khmer font of its own.
Chart.defaults.font.family = 'system-ui, "Segoe UI", Roboto, "Noto Sans Khmer", sans-serif';
const COLOURS = ['#2f7dc4', '#e0873a', '#3a9d5d', '#8e5cc4', '#c44f6a', '#7a7a7a'];
const ROW_HEIGHT = 26;   // px per category of a horizontal bar chart, so 25 provinces stay legible

/**
 * A chart card in `container`. `spec`: {id, title, report, query(), categories, series, horizontal,
 * tableColumns}; see dashboard.js. Returns {update(answer), fail(error), destroy()}.
 */
export function mountChart(container, spec, ctx) {
  const canvas = el('canvas', { role: 'img', testid: `chart-${spec.id}-canvas` });
  const canvasBox = el('div', { class: 'canvas-box' }, canvas);
  const tableBox = el('div', { class: 'table-box', testid: `chart-${spec.id}-table` });
  const empty = el('p', { class: 'empty', hidden: true, text: ctx.t('chart.empty') });
  const download = el('button', { type: 'button', testid: `chart-${spec.id}-csv`, text: ctx.t('chart.csv'),
    on: { click: () => downloadCsv(spec, ctx, download) } });
  const card = el('section', { class: 'card chart', testid: `chart-${spec.id}`, 'aria-labelledby': `chart-${spec.id}-title` },
    el('header', {}, el('h2', { id: `chart-${spec.id}-title`, text: spec.title }), download),
    canvasBox, empty,
    el('details', {}, el('summary', { text: ctx.t('chart.table') }), tableBox));
  container.appendChild(card);
  let chart = null;

  function update(answer) {
    const view = spec.view(answer);
    canvas.setAttribute('aria-label', ctx.t('chart.description', { title: spec.title, count: answer.rows.length }));
    renderTable(tableBox, view, ctx);
    empty.textContent = ctx.t('chart.empty');
    empty.hidden = view.labels.length > 0;
    canvasBox.hidden = view.labels.length === 0;
    if (spec.horizontal) canvasBox.style.height = `${Math.max(200, view.labels.length * ROW_HEIGHT * drawn(view) + 70)}px`;
    const data = {
      labels: view.labels.map((label, index) => (view.suppressed[index] ? `${label} (${ctx.t('suppressed', { k: view.k })})` : label)),
      datasets: view.series.filter((series) => !series.tableOnly).map((series, index) => ({
        label: series.label, data: series.values, backgroundColor: COLOURS[index % COLOURS.length],
        xAxisID: spec.horizontal ? (index ? 'x2' : 'x') : undefined,
        yAxisID: spec.horizontal ? undefined : 'y',
      })),
    };
    if (chart) {
      chart.data = data;
      chart.update('none');
    } else {
      chart = new Chart(canvas, { type: spec.type || 'bar', data, options: options(spec, view, ctx) });
    }
  }

  /** The chart's question could not be answered (e.g. no assessment of the instrument yet): say why. */
  function fail(error) {
    empty.textContent = ctx.t('chart.unanswered', { detail: error.message });
    empty.hidden = false;
    canvasBox.hidden = true;
    clear(tableBox);
  }

  return {
    update,
    fail,
    destroy() {
      chart?.destroy();
      card.remove();
    },
  };
}

/** How many series the chart draws (the others are in the table only). */
function drawn(view) {
  return view.series.filter((series) => !series.tableOnly).length;
}

function options(spec, view, ctx) {
  const numberTicks = { callback: (value) => ctx.formatNumber(value) };
  const scales = spec.horizontal
    ? { x: { beginAtZero: true, ticks: numberTicks, position: 'bottom' }, y: { ticks: { autoSkip: false } } }
    : { y: { beginAtZero: true, ticks: numberTicks }, x: { ticks: { autoSkip: true } } };
  if (spec.horizontal && drawn(view) > 1) scales.x2 = { beginAtZero: true, ticks: numberTicks, position: 'top', grid: { drawOnChartArea: false } };
  return {
    indexAxis: spec.horizontal ? 'y' : 'x',
    animation: false,          // polled every few seconds: bars move without replaying an animation
    responsive: true,
    maintainAspectRatio: false,
    scales,
    plugins: {
      legend: { display: drawn(view) > 1 },
      tooltip: {
        callbacks: {
          label: (item) => `${item.dataset.label}: ${item.raw === null ? ctx.t('suppressed', { k: view.k }) : ctx.formatNumber(item.raw)}`,
        },
      },
    },
  };
}

/** The table of a view: a row per category, a column per series; suppressed cells say so. */
function renderTable(box, view, ctx) {
  const head = el('tr', {}, el('th', { scope: 'col', text: view.categoryLabel }),
    view.series.map((series) => el('th', { scope: 'col', text: series.label })));
  const body = view.labels.map((label, row) => el('tr', { testid: 'chart-row' },
    el('th', { scope: 'row', text: label }),
    view.series.map((series) => {
      const value = series.values[row];
      const hidden = value === null || value === undefined;
      return el('td', { class: hidden ? 'num suppressed' : 'num', testid: hidden ? 'cell-suppressed' : 'cell',
        text: hidden ? ctx.t('suppressed', { k: view.k }) : ctx.formatNumber(value) });
    })));
  clear(box).appendChild(el('table', {}, el('thead', {}, head), el('tbody', {}, body)));
}

/** The API's CSV for the chart's question, fetched with the key and saved from a Blob: the key never
 * goes into a URL. */
async function downloadCsv(spec, ctx, button) {
  button.disabled = true;
  try {
    const csv = await ctx.api(`/analytics/${spec.report}`, { accept: 'text/csv', query: spec.query() });
    const url = URL.createObjectURL(new Blob([csv], { type: 'text/csv' }));
    const link = el('a', { href: url, download: `vmc-${spec.id}.csv`, hidden: true });
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (error) {
    button.title = ctx.t('error.generic', { detail: error.message });
  } finally {
    button.disabled = false;
  }
}
