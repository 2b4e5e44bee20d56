# Sourced by kafka.sh and registry.sh: stops the service the test kit
# started for itself once no test process uses it any more.
#
# Expects $DIR (the service's state: `users`, one test process id per
# line, and `lock`, taken by a test process while it registers), $PID_FILE
# (the service's pid file in $DIR) and a `stop` function.

users_alive() {
  local pid
  [ -f "$DIR/users" ] || return 1
  while read -r pid; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then return 0; fi
  done < "$DIR/users"
  return 1
}

# reap SECONDS: stop the service once none of $DIR/users has been alive for
# SECONDS.
reap() {
  local grace="${1:-30}" idle=0
  while true; do
    sleep 1
    [ -f "$DIR/$PID_FILE" ] || exit 0
    if users_alive; then idle=0; continue; fi
    idle=$((idle + 1))
    [ "$idle" -ge "$grace" ] || continue
    # Under the lock a joining test process takes (flock, as Rust's
    # File::lock): none can register while the service is being stopped.
    exec 9>>"$DIR/lock"
    flock 9
    if ! users_alive; then
      stop
      rm -f "$DIR/users" "$DIR/addresses"
      exit 0
    fi
    flock -u 9
    idle=0
  done
}
