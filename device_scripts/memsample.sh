#!/system/bin/sh
# Sample the peak memory of an app while it runs: VmHWM from /proc/<pid>/status and the TOTAL PSS / RSS lines of
# `dumpsys meminfo <package>`. Writes "key=value" lines to OUT (through OUT.tmp and a rename) after every sample,
# so the host can read it at any time; stops when the process is gone.
#   usage: memsample.sh PACKAGE OUT [INTERVAL_SECONDS] [MAX_SAMPLES]
pkg="$1"; out="$2"; interval="${3:-0.5}"; max="${4:-7200}"
if [ -z "$pkg" ] || [ -z "$out" ]; then
  echo "usage: memsample.sh PACKAGE OUT [INTERVAL] [MAX_SAMPLES]" >&2; exit 2
fi
hwm=0; pss=0; rss=0; n=0; waited=0
while [ "$n" -lt "$max" ]; do
  pid="$(pidof "$pkg" 2>/dev/null | cut -d' ' -f1)"
  if [ -z "$pid" ]; then
    # not started yet, or finished: wait a little for a start, stop after a finish
    [ "$n" -gt 0 ] && break
    waited=$((waited + 1)); [ "$waited" -gt 40 ] && break
    sleep "$interval"; continue
  fi
  kb="$(sed -n 's/^VmHWM:[^0-9]*\([0-9][0-9]*\).*/\1/p' "/proc/$pid/status" 2>/dev/null)"
  [ -n "$kb" ] && [ "$kb" -gt "$hwm" ] && hwm="$kb"
  info="$(dumpsys meminfo "$pkg" 2>/dev/null)"
  p="$(printf '%s\n' "$info" | sed -n 's/.*TOTAL PSS: *\([0-9][0-9]*\).*/\1/p' | head -n 1)"
  r="$(printf '%s\n' "$info" | sed -n 's/.*TOTAL RSS: *\([0-9][0-9]*\).*/\1/p' | head -n 1)"
  [ -n "$p" ] && [ "$p" -gt "$pss" ] && pss="$p"
  [ -n "$r" ] && [ "$r" -gt "$rss" ] && rss="$r"
  n=$((n + 1))
  printf 'samples=%s\nvmhwm_kb=%s\npeak_pss_kb=%s\npeak_rss_kb=%s\n' "$n" "$hwm" "$pss" "$rss" > "$out.tmp" && mv "$out.tmp" "$out"
  sleep "$interval"
done
exit 0
