#!/system/bin/sh
# Start the app's benchmark on a request and wait until its process is up; print its pid, or nothing when the
# process did not show within WAIT_SECONDS (it may have finished or crashed already: the host decides from
# result.json and logcat).
#   usage: launch.sh PACKAGE ACTIVITY REQUEST_PATH [WAIT_SECONDS]
# Every argument arrives already quoted by the host; here they are only ever used inside double quotes.
pkg="$1"; activity="$2"; request="$3"; wait_s="${4:-5}"
if [ -z "$pkg" ] || [ -z "$activity" ] || [ -z "$request" ]; then
  echo "usage: launch.sh PACKAGE ACTIVITY REQUEST_PATH [WAIT_SECONDS]" >&2; exit 2
fi
am start -S -n "$pkg/$activity" --es request "$request" >/dev/null || { echo "am start failed" >&2; exit 3; }
i=0
while [ "$i" -lt "$((wait_s * 10))" ]; do
  pid="$(pidof "$pkg" 2>/dev/null | cut -d' ' -f1)"
  [ -n "$pid" ] && { echo "$pid"; exit 0; }
  sleep 0.1; i=$((i + 1))
done
exit 0
