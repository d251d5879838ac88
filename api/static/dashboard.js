// Cinch dashboard: small progressive enhancements; every page works without them.
"use strict";

function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text);
  }
  // Plain-HTTP fallback: select a temporary textarea and copy it.
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "sr-only";
  document.body.appendChild(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  return ok ? Promise.resolve() : Promise.reject(new Error("copy failed"));
}

function statusNear(element) {
  const section = element.closest("section") || document;
  return section.querySelector(".copy-status");
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const status = statusNear(button);
  copyText(source.textContent).then(
    () => {
      button.textContent = "Copied";
      if (status) status.textContent = "Copied to the clipboard.";
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    },
    () => {
      if (status) status.textContent = "Could not copy: select the text and copy it by hand.";
    },
  );
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

// Top-up page: show the credits for the amount as it is typed.
const amount = document.getElementById("amount");
const preview = document.getElementById("amount-credits");
if (amount && preview && amount.dataset.creditsPerUsd) {
  const perUsd = Number(amount.dataset.creditsPerUsd);
  const min = Number(amount.dataset.min);
  const max = Number(amount.dataset.max);
  const update = () => {
    const text = amount.value.trim().replace(/^\$/, "").replace(/,/g, "");
    if (!/^\d+(\.\d{1,2})?$/.test(text)) {
      preview.textContent = "Enter an amount in US dollars, like 5 or 12.50.";
      return;
    }
    const cents = Math.round(Number(text) * 100);
    const credits = Math.floor((cents * perUsd) / 100);
    let note = "";
    if (cents < min * 100) note = ` The smallest top-up is $${min}.`;
    else if (cents > max * 100) note = ` The largest top-up is $${max.toLocaleString("en-US")}.`;
    preview.textContent = `You get ${credits.toLocaleString("en-US")} credits.${note}`;
  };
  amount.addEventListener("input", update);
}
