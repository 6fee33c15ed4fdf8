// The graphical console in the page: noVNC (vendored, served by vmplane) over the VNC WebSocket,
// opened with the one-time token from POST /vms/{id}/vnc; the WebSocket carries RFB in binary
// frames (subprotocol "binary") to the VM's VNC server. Ctrl-Alt-Del, a clipboard paste typed as
// key presses (a guest's console has no clipboard) and full screen; a screenshot of the screen
// (GET /vms/{id}/screenshot) is what the VM list shows.

import RFB from "../vendor/novnc/core/rfb.js";
import { post } from "./api.js";
import { consoleUnavailable } from "./console.js";
import { errorText, h, replace } from "./dom.js";

// What the pasted text is typed as: each character's key on a US keyboard (KeyboardEvent.code,
// which noVNC sends as a scancode when the server takes QEMU's extended key events, so the guest's
// layout reads it as that key) and whether Shift is held for it.
const SHIFTED = { "!": "Digit1", "@": "Digit2", "#": "Digit3", $: "Digit4", "%": "Digit5", "^": "Digit6", "&": "Digit7", "*": "Digit8",
  "(": "Digit9", ")": "Digit0", _: "Minus", "+": "Equal", "{": "BracketLeft", "}": "BracketRight", "|": "Backslash", ":": "Semicolon",
  '"': "Quote", "<": "Comma", ">": "Period", "?": "Slash", "~": "Backquote" };
const PLAIN = { "-": "Minus", "=": "Equal", "[": "BracketLeft", "]": "BracketRight", "\\": "Backslash", ";": "Semicolon", "'": "Quote",
  ",": "Comma", ".": "Period", "/": "Slash", "`": "Backquote", " ": "Space" };
const XK_SHIFT_L = 0xffe1;
const XK_RETURN = 0xff0d;
const XK_TAB = 0xff09;
export const PASTE_MAX = 4096;

/** [keysym, code, shift] for one character of pasted text. */
export function keyFor(ch) {
  if (ch === "\n") return [XK_RETURN, "Enter", false];
  if (ch === "\t") return [XK_TAB, "Tab", false];
  const cp = ch.codePointAt(0);
  // X keysyms: Latin-1 is its own code point; the rest of Unicode is 0x01000000 + code point
  const keysym = (cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xff) ? cp : 0x01000000 + cp;
  if (/^[a-z]$/.test(ch)) return [keysym, `Key${ch.toUpperCase()}`, false];
  if (/^[A-Z]$/.test(ch)) return [keysym, `Key${ch}`, true];
  if (/^[0-9]$/.test(ch)) return [keysym, `Digit${ch}`, false];
  if (SHIFTED[ch]) return [keysym, SHIFTED[ch], true];
  if (PLAIN[ch]) return [keysym, PLAIN[ch], false];
  return [keysym, null, false];
}

export class GraphicalConsole {
  constructor(vmId) {
    this.vmId = vmId;
    this.rfb = null;
    this.unavailable = null;
    this.state = h("p", { class: "muted", role: "status", id: "display-state" }, "Not connected.");
    this.connectBtn = h("button", { type: "button", "aria-describedby": "display-state", onclick: () => this.connect() }, "Open display");
    this.disconnectBtn = h("button", { type: "button", class: "secondary", disabled: true, onclick: () => this.disconnect() }, "Close display");
    this.cadBtn = h("button", { type: "button", class: "secondary", disabled: true, onclick: () => this.ctrlAltDel() }, "Send Ctrl-Alt-Del");
    this.fullBtn = h("button", { type: "button", class: "secondary", disabled: true, onclick: () => this.fullScreen() }, "Full screen");
    this.pasteText = h("textarea", { id: "display-paste", rows: 2, maxlength: PASTE_MAX, spellcheck: "false",
      "aria-describedby": "display-paste-hint" });
    this.pasteBtn = h("button", { type: "button", class: "secondary", disabled: true, onclick: () => this.paste() }, "Type it");
    this.screen = h("div", { class: "display-screen", id: "display-screen" });
    this.el = h("div", {},
      h("div", { class: "toolbar" }, this.connectBtn, this.disconnectBtn, this.cadBtn, this.fullBtn, this.state),
      h("p", { class: "hint muted" }, "Keys typed while the screen has the focus go to the guest's keyboard. Press Escape then Tab to leave it."),
      this.screen,
      h("div", { class: "field" },
        h("label", { for: "display-paste" }, "Paste text"),
        this.pasteText,
        h("p", { class: "hint", id: "display-paste-hint" },
          `Typed into the guest as key presses of a US keyboard (at most ${PASTE_MAX} characters; a new line is Enter).`),
        this.pasteBtn));
    this.escaped = false;
    this.onKey = (e) => {
      // Escape then Tab leaves the screen for keyboard users (Tab alone is for the guest)
      if (e.type !== "keydown") return;
      if (this.escaped && e.key === "Tab") {
        this.escaped = false;
        e.preventDefault();
        e.stopPropagation();
        this.rfb?.blur();
        this.disconnectBtn.focus();
        return;
      }
      this.escaped = e.key === "Escape";
    };
    this.screen.addEventListener("keydown", this.onKey, true);
  }

  /** Follow the VM: Connect only on a running, placed VM; otherwise say why. */
  setVm(vm) {
    this.unavailable = consoleUnavailable(vm)?.replace("The console", "The display") ?? null;
    if (this.rfb) return; // an open display closes by itself when the VM stops
    this.connectBtn.disabled = this.unavailable !== null;
    if (this.unavailable) this.connectBtn.setAttribute("title", this.unavailable);
    else this.connectBtn.removeAttribute("title");
    if (this.unavailable) this.setState(this.unavailable);
    else if (this.state.textContent.startsWith("The display opens")) this.setState("Not connected.");
  }

  setConnected(on) {
    this.disconnectBtn.disabled = !on;
    this.cadBtn.disabled = !on;
    this.fullBtn.disabled = !on;
    this.pasteBtn.disabled = !on;
  }

  async connect() {
    if (this.unavailable) { this.setState(this.unavailable); return; }
    this.disconnect();
    this.connectBtn.disabled = true;
    this.setState("Connecting…");
    try {
      const { websocketPath } = await post(`/vms/${this.vmId}/vnc`);
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const rfb = new RFB(this.screen, `${scheme}://${location.host}${websocketPath}`, { shared: true, wsProtocols: ["binary"] });
      rfb.scaleViewport = true; // the guest's screen fits the page (full screen: the whole screen)
      rfb.focusOnClick = true;
      this.rfb = rfb;
      rfb.addEventListener("connect", () => {
        this.setState("Connected.");
        this.setConnected(true);
        rfb.focus();
      });
      rfb.addEventListener("securityfailure", (e) => this.setState(`Refused: ${e.detail.reason || "security failure"}`));
      rfb.addEventListener("disconnect", (e) => {
        if (this.rfb !== rfb) return;
        this.rfb = null;
        this.connectBtn.disabled = this.unavailable !== null;
        this.setConnected(false);
        this.setState(e.detail.clean ? "Disconnected." : "Disconnected: the connection to the VM's display was lost.");
      });
    } catch (err) {
      this.connectBtn.disabled = this.unavailable !== null;
      this.setState(`Could not connect: ${errorText(err)}`); // a 409 names the VM's state
    }
  }

  ctrlAltDel() {
    if (!this.rfb) return;
    this.rfb.sendCtrlAltDel();
    this.rfb.focus();
  }

  fullScreen() {
    if (!this.rfb) return;
    if (document.fullscreenElement) document.exitFullscreen();
    else this.screen.requestFullscreen().then(() => this.rfb?.focus(), (err) => this.setState(`No full screen: ${err.message}`));
  }

  /** Type the text in the paste box into the guest, key by key. */
  paste() {
    const rfb = this.rfb;
    const text = this.pasteText.value.replace(/\r\n?/g, "\n");
    if (!rfb || !text) return;
    for (const ch of Array.from(text).slice(0, PASTE_MAX)) {
      const [keysym, code, shift] = keyFor(ch);
      if (shift) rfb.sendKey(XK_SHIFT_L, "ShiftLeft", true);
      rfb.sendKey(keysym, code);
      if (shift) rfb.sendKey(XK_SHIFT_L, "ShiftLeft", false);
    }
    this.pasteText.value = "";
    rfb.focus();
  }

  disconnect() {
    const rfb = this.rfb;
    this.rfb = null;
    if (rfb) rfb.disconnect();
    this.connectBtn.disabled = this.unavailable !== null;
    this.setConnected(false);
    if (rfb) this.setState(this.unavailable ? `Disconnected. ${this.unavailable}` : "Disconnected.");
  }

  setState(text) { replace(this.state, text); }

  dispose() {
    this.disconnect();
    this.screen.removeEventListener("keydown", this.onKey, true);
  }
}
