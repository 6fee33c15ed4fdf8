# Sourced by the install scripts: `as_root "what for" cmd args...` runs a command as root,
# through sudo when not root already; without either it says what it needed and fails.
as_root() {
  local why="$1"
  shift
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "$(basename "$0"): need root (or sudo) to $why" >&2
    return 1
  fi
}
