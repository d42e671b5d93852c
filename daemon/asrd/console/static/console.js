// Live refresh for pages that ask for it (data-refresh = seconds); every page works without it.
"use strict";
const every = Number(document.body.dataset.refresh || 0);
if (every > 0) {
  setTimeout(() => { if (!document.hidden) location.reload(); }, every * 1000);
}
