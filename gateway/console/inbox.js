// Placeholder: the verification inbox is written by the console-inbox work (issue 19, point 3).
export const strings = { en: {}, km: {} };

export function mountInbox(container, ctx) {
  return { refresh() {}, destroy() {} };
}
