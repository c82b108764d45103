// Every label of the console in English and Khmer; inbox.js brings its own (`inbox.` keys), merged by
// app.js. `{name}` in a text is replaced by the value of `name`.

export const LOCALES = { en: 'en-GB', km: 'km-KH' };

export const STRINGS = {
  en: {
    'app.title': 'VMC Connect',
    'lang.switch': 'ភាសាខ្មែរ',
    'lang.switch.label': 'Switch to Khmer',
    'signin.heading': 'Sign in',
    'signin.key': 'API key',
    'signin.help': 'Type your API key (vmc_…). It is kept in this browser tab only and forgotten when the tab closes.',
    'signin.submit': 'Sign in',
    'signin.checking': 'Checking the key…',
    'signin.rejected': 'This key was not accepted. Check it and try again.',
    'signin.unreachable': 'The server could not be reached. Try again.',
    'signin.revoked': 'This key is no longer accepted (revoked or expired). Sign in with another key.',
    'signout': 'Sign out',
    'tab.dashboard': 'Dashboard',
    'tab.inbox': 'Verification inbox',
    'scope.missing': 'This page needs the scope {scope}, which this key does not hold. Ask your administrator for a key with it.',
    'scopes.held': 'This key holds: {scopes}.',
    'scopes.none': 'This key holds none of the scopes the console uses.',
    'organization.known': 'Organisation: {name}',
    'filters.heading': 'Filters',
    'filter.from': 'From',
    'filter.to': 'To',
    'filter.program': 'Programme',
    'filter.project': 'Project',
    'filter.organization': 'Organisation',
    'filter.province': 'Province',
    'filter.any': 'All',
    'filter.status': 'Entries counted',
    'filter.status.verified': 'Verified only',
    'filter.status.all': 'Verified and submitted',
    'filter.granularity': 'Time step',
    'filter.month': 'Month',
    'filter.week': 'Week',
    'filter.instrument': 'Skills instrument',
    'filter.reset': 'Clear filters',
    'live.updated': 'Figures as of {time}; updated every {seconds} seconds.',
    'live.waiting': 'Loading figures…',
    'live.error': 'Could not update the figures: {detail}',
    'figure.volunteers': 'Volunteers',
    'figure.hours': 'Verified hours',
    'figure.hours.all': 'Hours (verified and submitted)',
    'figure.activities': 'Activities',
    'figure.beneficiaries': 'People reached',
    'figure.children': 'of whom children',
    'suppressed': 'fewer than {k}',
    'suppressed.note': 'Cells built from fewer than {k} volunteers are hidden to protect people’s privacy.',
    'chart.province': 'Hours and volunteers by province',
    'chart.time': 'Verified hours over time',
    'chart.sex_age': 'Volunteers by sex and age band',
    'chart.activity_type': 'Hours by activity type',
    'chart.focus_area': 'Hours by focus area',
    'chart.skills': 'Skills change by verified-hours band',
    'chart.csv': 'Download CSV',
    'chart.table': 'Data table',
    'chart.empty': 'No figures for these filters.',
    'chart.description': '{title}: {count} rows; the table below holds every value.',
    'chart.unanswered': 'These figures cannot be shown: {detail}',
    'measure.hours': 'Hours',
    'measure.volunteers': 'Volunteers',
    'measure.activities': 'Activities',
    'measure.mean_change': 'Mean change',
    'measure.baseline_mean': 'Baseline mean',
    'measure.endline_mean': 'Endline mean',
    'dim.province': 'Province',
    'dim.month': 'Month',
    'dim.week': 'Week',
    'dim.sex': 'Sex',
    'dim.age_band': 'Age band',
    'dim.activity_type': 'Activity type',
    'dim.focus_area': 'Focus area',
    'dim.hours_band': 'Verified hours',
    'sex.female': 'Female',
    'sex.male': 'Male',
    'sex.other': 'Other',
    'sex.undisclosed': 'Not said',
    'sex.unknown': 'Unknown',
    'age.unknown': 'Unknown',
    'band.hours': '{band} h',
    'unknown': 'Unknown',
    'error.generic': 'Something went wrong: {detail}',
  },
  km: {
    'app.title': 'VMC Connect',
    'lang.switch': 'English',
    'lang.switch.label': 'ប្ដូរទៅភាសាអង់គ្លេស',
    'signin.heading': 'ចូលប្រើ',
    'signin.key': 'កូនសោ API',
    'signin.help': 'វាយបញ្ចូលកូនសោ API របស់អ្នក (vmc_…)។ វាត្រូវបានរក្សាទុកតែក្នុងផ្ទាំងកម្មវិធីរុករកនេះ ហើយនឹងបាត់នៅពេលបិទផ្ទាំង។',
    'signin.submit': 'ចូលប្រើ',
    'signin.checking': 'កំពុងពិនិត្យកូនសោ…',
    'signin.rejected': 'កូនសោនេះមិនត្រូវបានទទួលយកទេ។ សូមពិនិត្យ ហើយព្យាយាមម្ដងទៀត។',
    'signin.unreachable': 'មិនអាចភ្ជាប់ទៅម៉ាស៊ីនមេបានទេ។ សូមព្យាយាមម្ដងទៀត។',
    'signin.revoked': 'កូនសោនេះលែងត្រូវបានទទួលយកទៀតហើយ (ត្រូវបានដកហូត ឬផុតកំណត់)។ សូមចូលប្រើដោយកូនសោផ្សេង។',
    'signout': 'ចាកចេញ',
    'tab.dashboard': 'ផ្ទាំងតួលេខ',
    'tab.inbox': 'ប្រអប់ផ្ទៀងផ្ទាត់',
    'scope.missing': 'ទំព័រនេះត្រូវការសិទ្ធិ {scope} ដែលកូនសោនេះមិនមាន។ សូមស្នើសុំកូនសោដែលមានសិទ្ធិនេះពីអ្នកគ្រប់គ្រង។',
    'scopes.held': 'កូនសោនេះមានសិទ្ធិ៖ {scopes}។',
    'scopes.none': 'កូនសោនេះមិនមានសិទ្ធិណាមួយដែលផ្ទាំងនេះប្រើទេ។',
    'organization.known': 'អង្គការ៖ {name}',
    'filters.heading': 'តម្រង',
    'filter.from': 'ចាប់ពី',
    'filter.to': 'ដល់',
    'filter.program': 'កម្មវិធី',
    'filter.project': 'គម្រោង',
    'filter.organization': 'អង្គការ',
    'filter.province': 'ខេត្ត',
    'filter.any': 'ទាំងអស់',
    'filter.status': 'កំណត់ត្រាដែលរាប់',
    'filter.status.verified': 'តែបានផ្ទៀងផ្ទាត់',
    'filter.status.all': 'បានផ្ទៀងផ្ទាត់ និងបានដាក់ស្នើ',
    'filter.granularity': 'ជំហានពេលវេលា',
    'filter.month': 'ខែ',
    'filter.week': 'សប្ដាហ៍',
    'filter.instrument': 'ឧបករណ៍វាយតម្លៃជំនាញ',
    'filter.reset': 'សម្អាតតម្រង',
    'live.updated': 'តួលេខគិតត្រឹម {time}; ធ្វើបច្ចុប្បន្នភាពរៀងរាល់ {seconds} វិនាទី។',
    'live.waiting': 'កំពុងផ្ទុកតួលេខ…',
    'live.error': 'មិនអាចធ្វើបច្ចុប្បន្នភាពតួលេខបានទេ៖ {detail}',
    'figure.volunteers': 'អ្នកស្ម័គ្រចិត្ត',
    'figure.hours': 'ម៉ោងដែលបានផ្ទៀងផ្ទាត់',
    'figure.hours.all': 'ម៉ោង (បានផ្ទៀងផ្ទាត់ និងបានដាក់ស្នើ)',
    'figure.activities': 'សកម្មភាព',
    'figure.beneficiaries': 'មនុស្សដែលទទួលបានសេវា',
    'figure.children': 'ក្នុងនោះជាកុមារ',
    'suppressed': 'តិចជាង {k}',
    'suppressed.note': 'ក្រឡាដែលមានអ្នកស្ម័គ្រចិត្តតិចជាង {k} នាក់ ត្រូវបានលាក់ដើម្បីការពារឯកជនភាព។',
    'chart.province': 'ម៉ោង និងអ្នកស្ម័គ្រចិត្តតាមខេត្ត',
    'chart.time': 'ម៉ោងដែលបានផ្ទៀងផ្ទាត់តាមពេលវេលា',
    'chart.sex_age': 'អ្នកស្ម័គ្រចិត្តតាមភេទ និងក្រុមអាយុ',
    'chart.activity_type': 'ម៉ោងតាមប្រភេទសកម្មភាព',
    'chart.focus_area': 'ម៉ោងតាមវិស័យផ្ដោត',
    'chart.skills': 'ការប្រែប្រួលជំនាញតាមចំនួនម៉ោងដែលបានផ្ទៀងផ្ទាត់',
    'chart.csv': 'ទាញយក CSV',
    'chart.table': 'តារាងទិន្នន័យ',
    'chart.empty': 'គ្មានតួលេខសម្រាប់តម្រងទាំងនេះទេ។',
    'chart.description': '{title}៖ {count} ជួរ; តារាងខាងក្រោមមានតម្លៃទាំងអស់។',
    'chart.unanswered': 'មិនអាចបង្ហាញតួលេខទាំងនេះបានទេ៖ {detail}',
    'measure.hours': 'ម៉ោង',
    'measure.volunteers': 'អ្នកស្ម័គ្រចិត្ត',
    'measure.activities': 'សកម្មភាព',
    'measure.mean_change': 'ការប្រែប្រួលមធ្យម',
    'measure.baseline_mean': 'មធ្យមមូលដ្ឋាន',
    'measure.endline_mean': 'មធ្យមចុងក្រោយ',
    'dim.province': 'ខេត្ត',
    'dim.month': 'ខែ',
    'dim.week': 'សប្ដាហ៍',
    'dim.sex': 'ភេទ',
    'dim.age_band': 'ក្រុមអាយុ',
    'dim.activity_type': 'ប្រភេទសកម្មភាព',
    'dim.focus_area': 'វិស័យផ្ដោត',
    'dim.hours_band': 'ម៉ោងដែលបានផ្ទៀងផ្ទាត់',
    'sex.female': 'ស្រី',
    'sex.male': 'ប្រុស',
    'sex.other': 'ផ្សេងទៀត',
    'sex.undisclosed': 'មិនបានបញ្ជាក់',
    'sex.unknown': 'មិនស្គាល់',
    'age.unknown': 'មិនស្គាល់',
    'band.hours': '{band} ម៉ោង',
    'unknown': 'មិនស្គាល់',
    'error.generic': 'មានបញ្ហា៖ {detail}',
  },
};

/** A translator over `strings` (STRINGS merged with the modules' own) for `lang`, English as fallback. */
export function translator(strings, lang) {
  return (key, vars = {}) => {
    const text = strings[lang]?.[key] ?? strings.en[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (whole, name) => (name in vars ? String(vars[name]) : whole));
  };
}

// Khmer conventions (CLDR km) for browsers whose Intl has no Khmer data (Debian's Chromium, for one):
// month names, day-month-year order, '.' between thousands and ',' before decimals.
const KHMER_MONTHS = ['មករា', 'កុម្ភៈ', 'មីនា', 'មេសា', 'ឧសភា', 'មិថុនា', 'កក្កដា', 'សីហា', 'កញ្ញា', 'តុលា', 'វិច្ឆិកា', 'ធ្នូ'];

/** Number and date formatters in `lang`'s conventions: Intl in km-KH / en-GB, or the Khmer
 * conventions above where the browser's Intl lacks Khmer. Dates given as YYYY-MM-DD are calendar
 * dates (shown as they are, whatever the time zone); date-times are shown in local time. */
export function formatters(lang) {
  const locale = LOCALES[lang];
  const native = Intl.DateTimeFormat.supportedLocalesOf([locale]).length > 0;
  const numbers = new Intl.NumberFormat(native ? locale : 'en-GB', { maximumFractionDigits: 2 });
  const formatNumber = (n) => {
    if (n === null || n === undefined) return '';
    const text = numbers.format(n);
    return native ? text : text.replace(/[,.]/g, (mark) => (mark === ',' ? '.' : ','));
  };
  const calendar = (iso) => new Date(`${iso.slice(0, 10)}T00:00:00Z`);
  const intl = (options) => new Intl.DateTimeFormat(locale, options);
  const khmerDate = (d, utc) => `${utc ? d.getUTCDate() : d.getDate()} ${KHMER_MONTHS[utc ? d.getUTCMonth() : d.getMonth()]} ${utc ? d.getUTCFullYear() : d.getFullYear()}`;
  const pad = (n) => String(n).padStart(2, '0');
  return {
    formatNumber,
    formatDate: (iso) => {
      if (!iso) return '';
      return native ? intl({ dateStyle: 'medium', timeZone: 'UTC' }).format(calendar(iso)) : khmerDate(calendar(iso), true);
    },
    formatDateTime: (iso) => {
      if (!iso) return '';
      const d = new Date(iso);
      return native ? intl({ dateStyle: 'medium', timeStyle: 'medium' }).format(d)
        : `${khmerDate(d, false)} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    },
    /** `YYYY-MM` as a month and year. */
    formatMonth: (month) => {
      const d = calendar(`${month}-01`);
      return native ? intl({ year: 'numeric', month: 'short', timeZone: 'UTC' }).format(d)
        : `${KHMER_MONTHS[d.getUTCMonth()]} ${d.getUTCFullYear()}`;
    },
  };
}
