"""Config files of the lab's services, rendered from the address plan.

Paths inside a config are the paths *the host* sees (its own /etc/nginx, /var/log, /run/...)
except where a daemon's pid or key must also be readable by the ops host: those point into
the lab folder, which every host sees at the same path.
"""

from __future__ import annotations

import json

from . import layout as L
from . import topology as T
from .keys import host_key


def sshd_config(host: str) -> str:
    """OpenSSH server config for ``host``: key login as root only, lab-owned keys and pid."""
    return f"""# resilience lab: sshd of {host} (generated; edits are overwritten by `lab up`)
Port 22
ListenAddress {T.HOSTS[host].address}
HostKey {host_key(host)}
PidFile {L.pid_file(host, "sshd")}
AuthorizedKeysFile {L.authorized_keys()}
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
StrictModes yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
# Ansible opens several sessions at once; the default 10:30:100 drops some of them.
MaxStartups 64:30:128
MaxSessions 64
LogLevel INFO
"""


def nginx_conf(host: str) -> str:
    """nginx of a web host: serves /var/www/portal, /healthz, logs in combined format."""
    addr = T.HOSTS[host].address
    return f"""# resilience lab: nginx of {host} (generated; edits are overwritten by `lab up`)
user www-data;
worker_processes 1;
pid {L.pid_file(host, "nginx")};
error_log /var/log/nginx/error.log;

events {{
    worker_connections 512;
}}

http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    charset utf-8;
    sendfile on;
    server_tokens off;
    # Per-host temp folders: /run is this host's own tmpfs.
    client_body_temp_path /run/nginx/body;
    proxy_temp_path /run/nginx/proxy;
    fastcgi_temp_path /run/nginx/fastcgi;
    uwsgi_temp_path /run/nginx/uwsgi;
    scgi_temp_path /run/nginx/scgi;
    access_log /var/log/nginx/portal.access.log combined;
    # Requests through the VIP come from lb1: take the client address HAProxy appends to
    # X-Forwarded-For (the last one; only when the peer is lb1), so the combined log names the
    # real client, which `resilience block from-logs` ranks. A client cannot forge it.
    set_real_ip_from {T.LB1_ADDR};
    set_real_ip_from {T.VIP_ADDR};
    real_ip_header X-Forwarded-For;
    real_ip_recursive off;

    server {{
        listen {addr}:80 default_server;
        server_name portal {host};
        root {T.SITE_PATH};
        index index.html;
        # Lets a client (and the tests) see which web host answered through the balancer.
        add_header X-Served-By $hostname always;

        location = /healthz {{
            access_log off;
            default_type text/plain;
            return 200 "ok\\n";
        }}
    }}
}}
"""


def haproxy_cfg() -> str:
    """HAProxy on lb1: VIP :80 -> backend portal (web1, web2), admin socket, server state."""
    web = "\n".join(f"    server {n} {T.HOSTS[n].address}:80 check" for n in T.WEB_HOSTS)
    return f"""# resilience lab: HAProxy of lb1 (generated; edits are overwritten by `lab up`)
# Reload: dump the server state first, then signal the master, so drain/maint survive:
#   echo "show servers state" | socat stdio /run/haproxy/admin.sock > /run/haproxy/server-state
#   kill -USR2 $(cat /run/haproxy/haproxy.pid)
global
    log stdout format raw local0
    stats socket {T.HAPROXY_SOCKET} mode 660 level admin expose-fd listeners
    stats timeout 30s
    server-state-file /run/haproxy/server-state
    user haproxy
    group haproxy

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    load-server-state-from-file global

frontend portal
    bind {T.VIP_ADDR}:80
    # The web hosts see lb1 as the peer; this header carries the client (see nginx_conf).
    option forwardfor
    default_backend {T.HAPROXY_BACKEND}

backend {T.HAPROXY_BACKEND}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /healthz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{web}

listen stats
    bind {T.LB1_ADDR}:8404
    stats enable
    stats uri /stats
    stats refresh 5s
"""


def pg_lab_conf() -> str:
    """Settings PostgreSQL reads from the lab's include file (postgresql.conf includes it)."""
    return f"""# resilience lab (generated)
listen_addresses = '{T.DB1_ADDR}'
port = {T.DB_PORT}
unix_socket_directories = '{L.pg_socket_dir()}'
password_encryption = 'scram-sha-256'
max_connections = 60
shared_buffers = 64MB
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_connections = on
"""


def pg_hba_conf() -> str:
    """Local peer auth (for the postgres OS user), scram-sha-256 over TCP from the lab."""
    return """# resilience lab (generated)
# TYPE  DATABASE  USER  ADDRESS          METHOD
local   all       all                    peer
host    all       all   198.18.0.0/16    scram-sha-256
"""


def s3_config(secret_key: str) -> str:
    """SeaweedFS S3 identities: one lab identity; anonymous and wrong keys are refused."""
    return json.dumps({
        "identities": [{
            "name": "resilience",
            "credentials": [{"accessKey": T.S3_ACCESS_KEY_ID, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }],
    }, indent=2) + "\n"
