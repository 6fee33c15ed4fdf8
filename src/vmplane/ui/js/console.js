// The serial console in the page: xterm.js (vendored, served by vmplane) over the console
// WebSocket, opened with the one-time token from POST /vms/{id}/console. It speaks the typed
// console protocol (subprotocol "vmplane.console"): keys go as binary frames, the terminal's
// size as a text frame {"type":"resize","rows":R,"cols":C} on attach and on every resize
// (the server sets it on the guest's serial tty, so `stty size` and full-screen programs fit).

import { Terminal } from "../vendor/xterm/xterm.js";
import { FitAddon } from "../vendor/xterm/addon-fit.js";
import { get, post } from "./api.js";
import { errorText, h, replace } from "./dom.js";

const PROTOCOL = "vmplane.console";
const encoder = new TextEncoder();

/** Why the console cannot be opened on this VM now, or null when it can (running, on a node). */
export function consoleUnavailable(vm) {
  if (vm.status !== "running") return `The console opens while the VM runs; it is ${vm.status}.`;
  if (!vm.nodeId) return "The console opens once the VM is placed on a node; it is on none.";
  return null;
}

export class SerialConsole {
  constructor(vmId) {
    this.vmId = vmId;
    this.ws = null;
    this.term = null;
    this.unavailable = null;
    this.state = h("p", { class: "muted", role: "status", id: "console-state" }, "Not connected.");
    this.sizeNote = h("p", { class: "hint muted", id: "console-size" });
    this.connectBtn = h("button", { type: "button", "aria-describedby": "console-state", onclick: () => this.connect() }, "Connect");
    this.disconnectBtn = h("button", { type: "button", class: "secondary", disabled: true, onclick: () => this.disconnect() }, "Disconnect");
    this.screen = h("div", { class: "terminal-wrap", id: "console-screen" });
    this.el = h("div", {},
      h("div", { class: "toolbar" }, this.connectBtn, this.disconnectBtn, this.state),
      h("p", { class: "hint muted" }, "Keys typed into the terminal go to the guest's serial console. Press Escape then Tab to leave it."),
      this.screen, this.sizeNote);
    this.onResize = () => this.fit && this.fit.fit();
    this.sizeTimer = null;
  }

  /** Follow the VM: Connect only on a running, placed VM; otherwise say why. */
  setVm(vm) {
    this.unavailable = consoleUnavailable(vm);
    if (this.ws) return; // an open console closes by itself when the VM stops
    this.connectBtn.disabled = this.unavailable !== null;
    if (this.unavailable) this.connectBtn.setAttribute("title", this.unavailable);
    else this.connectBtn.removeAttribute("title");
    const text = this.state.textContent;
    if (this.unavailable) this.setState(this.unavailable);
    else if (text.startsWith("The console opens")) this.setState("Not connected.");
  }

  ensureTerminal() {
    if (this.term) return;
    // lineHeight 1.2: at 1.0 the DOM renderer's rows (overflow: hidden) cut off what sits below
    // the baseline at a 1x pixel ratio, so `_` vanished (`x86 64`)
    this.term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, lineHeight: 1.2, scrollback: 2000, screenReaderMode: false,
      fontFamily: '"DejaVu Sans Mono", ui-monospace, monospace' });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    this.term.open(this.screen);
    this.term.textarea?.setAttribute("aria-label", "Serial console input");
    // Escape then Tab leaves the terminal for keyboard users (Tab alone is for the guest)
    let escaped = false;
    this.term.attachCustomKeyEventHandler((e) => {
      if (e.type !== "keydown") return true;
      if (escaped && e.key === "Tab") {
        escaped = false;
        e.preventDefault();
        (this.disconnectBtn.disabled ? this.connectBtn : this.disconnectBtn).focus();
        return false;
      }
      escaped = e.key === "Escape";
      return true;
    });
    this.term.onData((data) => {
      const ws = this.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      ws.send(ws.protocol === PROTOCOL ? encoder.encode(data) : data);
    });
    this.term.onResize(() => {
      clearTimeout(this.sizeTimer);
      this.sizeTimer = setTimeout(() => this.sendSize(), 200); // once a drag settles
    });
    window.addEventListener("resize", this.onResize);
    this.fit.fit();
  }

  sendSize() {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || ws.protocol !== PROTOCOL) return;
    ws.send(JSON.stringify({ type: "resize", rows: this.term.rows, cols: this.term.cols }));
  }

  control(text) {
    let msg;
    try { msg = JSON.parse(text); } catch { return; }
    if (msg.type === "resized") replace(this.sizeNote, `The guest's terminal is ${msg.cols} columns by ${msg.rows} rows.`);
    else if (msg.type === "error") replace(this.sizeNote, `The guest's terminal size is not set: ${msg.error}`);
  }

  async connect() {
    if (this.unavailable) { this.setState(this.unavailable); return; }
    this.ensureTerminal();
    this.disconnect();
    this.connectBtn.disabled = true;
    this.setState("Connecting…");
    try {
      const log = await get(`/vms/${this.vmId}/console/log?bytes=8192`);
      this.term.reset();
      if (log) this.term.write(log.replace(/\r?\n/g, "\r\n"));
      const { websocketPath } = await post(`/vms/${this.vmId}/console`);
      const scheme = location.protocol === "https:" ? "wss" : "ws";
      const ws = new WebSocket(`${scheme}://${location.host}${websocketPath}`, [PROTOCOL]);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        this.setState("Connected.");
        this.disconnectBtn.disabled = false;
        this.fit.fit();
        this.sendSize();
        this.term.focus();
      };
      ws.onmessage = (m) => {
        if (typeof m.data !== "string") this.term.write(new Uint8Array(m.data));
        else if (ws.protocol === PROTOCOL) this.control(m.data);
        else this.term.write(m.data);
      };
      ws.onclose = (e) => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.connectBtn.disabled = this.unavailable !== null;
        this.disconnectBtn.disabled = true;
        this.setState(e.reason ? `Disconnected: ${e.reason}` : "Disconnected.");
      };
    } catch (err) {
      this.connectBtn.disabled = this.unavailable !== null;
      this.setState(`Could not connect: ${errorText(err)}`); // a 409 names the VM's state
    }
  }

  disconnect() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    this.connectBtn.disabled = this.unavailable !== null;
    this.disconnectBtn.disabled = true;
    if (ws) this.setState(this.unavailable ? `Disconnected. ${this.unavailable}` : "Disconnected.");
  }

  setState(text) { replace(this.state, text); }

  dispose() {
    clearTimeout(this.sizeTimer);
    this.disconnect();
    window.removeEventListener("resize", this.onResize);
    if (this.term) this.term.dispose();
  }
}
