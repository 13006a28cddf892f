# Shared by the benchmark scripts that drive comet-server and comet-client over loopback
# (sourced, not run). After `bench_home DIR`: an isolated COMET_HOME in DIR with the
# built models linked in; `start NAME [SERVER OPTIONS…]` starts a comet-server on a free
# port (its address in $A, its log in DIR/log.NAME), `stop` stops it, `t CMD…` runs CMD
# and prints its wall time on stderr.
cd "$(dirname "${BASH_SOURCE[0]}")/.." && . .venv/bin/activate
export HF_HUB_OFFLINE=1
bench_home() {
  T=$1; rm -rf "$T"; mkdir -p "$T/home"
  ln -s "$HOME/.cache/comet/models" "$T/home/models"
  export COMET_HOME=$T/home
}
start() {
  local name=$1; shift
  comet-server --port 0 "$@" > "$T/log.$name" 2>&1 & echo $! > "$T/pid"
  until A=$(grep -o 'listening on [^ ]*' "$T/log.$name" | cut -d' ' -f3); [ -n "$A" ]; do sleep 0.5; done
}
stop() { kill "$(cat "$T/pid")"; wait "$(cat "$T/pid")" 2>/dev/null; }
t() { local s; s=$(date +%s.%N); "$@"; echo "WALL $(echo "$(date +%s.%N) - $s" | bc) :: ${*:1:4}" >&2; }
