// The national dashboard (analytics:read). Placeholder while it is built.
export const strings = { en: {}, km: {} };

export function mountDashboard(container, ctx) {
  return { refresh() {}, destroy() {} };
}
