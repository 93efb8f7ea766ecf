# shellcheck shell=bash
# The nginx the gateway benchmarks compare against (sourced by run.sh and callgrind_pier.sh):
# one worker, a keep-alive reverse proxy to the backend, the access log written to a file, TLS 1.3
# with HTTP/2 by ALPN on the second port. Uses $TMP, $HOST and $BACKEND_PORT of the caller.
#
# nginx_conf HTTP_PORT TLS_PORT [EXTRA_TOP_LEVEL_DIRECTIVES] > FILE
nginx_conf() {
    cat <<NGINX
worker_processes 1;
${3:+$3
}daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log $TMP/nginx-access.log combined;
    client_body_temp_path $TMP/nginx-body;
    proxy_temp_path $TMP/nginx-proxy;
    fastcgi_temp_path $TMP/nginx-fastcgi;
    uwsgi_temp_path $TMP/nginx-uwsgi;
    scgi_temp_path $TMP/nginx-scgi;
    keepalive_requests 1000000;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$1;
        listen 127.0.0.1:$2 ssl http2;
        server_name $HOST;
        ssl_certificate $TMP/tls.crt;
        ssl_certificate_key $TMP/tls.key;
        ssl_protocols TLSv1.3;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
}
