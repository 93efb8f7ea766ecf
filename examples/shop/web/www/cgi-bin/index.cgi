#!/bin/busybox sh
# web: the page at / (busybox httpd runs /cgi-bin/index.cgi for a directory without
# index.html). Each visit goes to api, which has db count it.
# API_URL=http://api.internal comes from `needs = ["api"]`; SHOP_NAME and GREETING from web.env.
host="${API_URL#http://}"
addr="$(nslookup "$host" 2>/dev/null | awk '/^Name:/ { found = 1 } found && /^Address/ && $NF ~ /^[0-9.]+$/ { print $NF; exit }')"
if [ -n "$addr" ] && reply="$(timeout 5 wget -q -O- --header "Host: $host" "http://$addr/cgi-bin/visit")"; then
  printf 'Content-Type: text/plain\r\n\r\n%s: %s\n%s web=%s\n' "$SHOP_NAME" "$GREETING" "$reply" "$PIER_TASK"
else
  printf 'HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n\r\napi (%s, address %s) did not answer\n' "$host" "${addr:-unknown}"
fi
