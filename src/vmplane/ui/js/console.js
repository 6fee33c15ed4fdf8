// The serial console in the page: xterm.js (vendored, served by vmplane) over the console
// WebSocket, opened with the one-time token from POST /vms/{id}/console.

import { Terminal } from "../vendor/xterm/xterm.js";
import { FitAddon } from "../vendor/xterm/addon-fit.js";
import { get, post } from "./api.js";
import { errorText, h, replace } from "./dom.js";

export class SerialConsole {
  constructor(vmId) {
    this.vmId = vmId;
    this.ws = null;
    this.term = null;
    this.state = h("p", { class: "muted", role: "status" }, "Not connected.");
    this.connectBtn = h("button", { type: "button", onclick: () => this.connect() }, "Connect");
    this.disconnectBtn = h("button", { type: "button", class: "secondary", disabled: true, onclick: () => this.disconnect() }, "Disconnect");
    this.screen = h("div", { class: "terminal-wrap", id: "console-screen" });
    this.el = h("div", {},
      h("div", { class: "toolbar" }, this.connectBtn, this.disconnectBtn, this.state),
      h("p", { class: "hint muted" }, "Keys typed into the terminal go to the guest's serial console. Press Escape then Tab to leave it."),
      this.screen);
    this.onResize = () => this.fit && this.fit.fit();
  }

  ensureTerminal() {
    if (this.term) return;
    this.term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 14, scrollback: 2000, screenReaderMode: false,
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
    this.term.onData((data) => { if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(data); });
    window.addEventListener("resize", this.onResize);
    this.fit.fit();
  }

  async connect() {
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
      const ws = new WebSocket(`${scheme}://${location.host}${websocketPath}`);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        this.setState("Connected.");
        this.disconnectBtn.disabled = false;
        this.term.focus();
      };
      ws.onmessage = (m) => this.term.write(typeof m.data === "string" ? m.data : new Uint8Array(m.data));
      ws.onclose = (e) => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.connectBtn.disabled = false;
        this.disconnectBtn.disabled = true;
        this.setState(e.reason ? `Disconnected: ${e.reason}` : "Disconnected.");
      };
    } catch (err) {
      this.connectBtn.disabled = false;
      this.setState(`Could not connect: ${errorText(err)}`);
    }
  }

  disconnect() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    this.connectBtn.disabled = false;
    this.disconnectBtn.disabled = true;
    if (ws) this.setState("Disconnected.");
  }

  setState(text) { replace(this.state, text); }

  dispose() {
    this.disconnect();
    window.removeEventListener("resize", this.onResize);
    if (this.term) this.term.dispose();
  }
}
