// A form's errors from the server (dom.js's fieldError, as the create form): next to the field the error names (`details.field`, in the
// API's words), else in the form's alert box. Used by the Templates page and the VM Edit panel.

import { ApiError } from "./api.js";
import { clearFieldError, errorText, fieldError, h, replace } from "./dom.js";

/** Take away the error marks `showError` left in `form`, and empty `alert`. */
export function clearErrors(form, alert) {
  replace(alert);
  for (const el of form.querySelectorAll("[aria-invalid]")) clearFieldError(el);
}

/** The API's field name of an error (`resources.disk_gb` or `resources.diskGb` -> `diskGb`), or null. */
export function errorField(err) {
  if (!(err instanceof ApiError) || !err.field) return null;
  return String(err.field).split(".").pop().replace(/_([a-z])/g, (_, c) => c.toUpperCase());
}

/** Show `err` next to the input `#<prefix>-<field>` it names (focused), else in `alert`. */
export function showError(form, alert, err, prefix) {
  clearErrors(form, alert);
  const name = errorField(err);
  const input = name ? form.querySelector(`#${prefix}-${name}`) : null;
  if (input) {
    fieldError(input, err.message); // dom.js's, as the create form's: under the field, gone once it is edited
    input.focus();
  } else {
    replace(alert, h("p", { class: "alert" }, errorText(err)));
  }
}
