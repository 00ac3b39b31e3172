# cedra-edge: one edge node = one HAProxy + one cedra-spoa + one cedra-agent,
# one task group whose tasks talk over UNIX sockets in the shared allocation
# directory (DESIGN 1, docs/operations.md).
#
#   nomad job run nomad/cedra-edge.nomad          (after nomad/valkey.nomad)
#
# Image: nomad/edge.Dockerfile (HAProxy 2.6 from Debian 12, cedra-spoa and
# cedra-agent from this repository's make install, haproxy/ configs in
# /usr/local/etc/cedra/haproxy, cedra-routes-sync).
#
# Why a system job: edge nodes are the fixed ingress hosts (the load balancer
# or DNS points at them, HAProxy binds a static port on the host), each runs
# exactly one edge and nothing else of ours, and each must work alone (no
# node-to-node traffic). A system job puts one allocation on every node of
# the class "edge" and on every new one without count bookkeeping, and never
# two on a node. (A service job with count + distinct_hosts would also allow
# canaries of the edge itself, but needs its count kept equal to the number of
# edge nodes by hand, and leaves a node without an edge whenever they differ.)
# Updates roll one node at a time (update.max_parallel = 1).
#
# Sockets (${NOMAD_ALLOC_DIR} is /alloc inside the containers), all mode 0600,
# all three daemons run as the same user "cedra" (uid 10001) of the image
# (its USER: they start unprivileged, so their files need no "user" line, and
# nothing here runs as root but the init task):
#   run/spoa.sock          SPOP: HAProxy -> cedra-spoa (CEDRA_SPOA_ADDR, "listen")
#   run/spoa-admin.sock    cedra-spoa operator socket: cedra-agent -> cedra-spoa
#   run/haproxy-admin.sock HAProxy Runtime API: cedra-agent -> HAProxy (CEDRA_HAPROXY_SOCK)
#   run/agent-admin.sock   cedra-agent operator socket (nomad alloc exec ... socat)
#   run/relay.sock         HAProxy to itself: canary pool -> stable pool when no canary server is usable (CEDRA_RELAY_ADDR)
#   routes/<build>.table   route tables, from Consul KV cedra/routes/<build> (deploy.sh)
#
# Consul registration: cedra-agent registers ITSELF ("register" in its
# configuration: a TTL check it keeps passing while healthy, deregistered on
# clean exit, DESIGN 3.3), so this job has no service block for it; Nomad
# registers HAProxy (cedra-edge) and cedra-spoa's metrics (cedra-spoa). No
# service is registered twice. Prometheus scrapes every service tagged
# "prometheus" at its meta.metrics_path (nomad/README.md).
#
# Health: HAProxy checks cedra-spoa itself (SPOP HELLO health check,
# "option spop-check" in haproxy.cfg); Consul checks HAProxy (TCP, and HTTP
# end to end through the edge), cedra-spoa's /metrics, and the agent's TTL.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "image" {
  type        = string
  description = "The edge image (nomad/edge.Dockerfile), e.g. registry.example.internal/cedra/edge:0.1.0."
}

variable "node_class" {
  type    = string
  default = "edge"
}

variable "http_port" {
  type    = number
  default = 80
}

variable "consul_http_addr" {
  type        = string
  default     = "http://127.0.0.1:8500"
  description = "The node's Consul agent (host network: loopback works)."
}

variable "haproxy_threads" {
  type    = number
  default = 2
}

variable "spoa_threads" {
  type    = number
  default = 2
}

variable "canary_slots" {
  type    = number
  default = 8
}

variable "canary_weight" {
  type        = number
  default     = 10
  description = "Percent of new users pinned to a live canary when the service Meta has no canary_weight."
}

variable "session_cookie" {
  type        = string
  default     = "sid"
  description = "The storefront's session cookie: requests carrying it never get a page from the edge cache."
}

job "cedra-edge" {
  type        = "system"
  datacenters = var.datacenters
  priority    = 80

  constraint {
    attribute = "${node.class}"
    value     = var.node_class
  }

  # One node at a time. Nomad versions whose system scheduler has no
  # deployments enforce only max_parallel and stagger (the stagger leaves a
  # replaced node time to pass its checks); later ones also wait for
  # health_check / min_healthy_time.
  update {
    max_parallel     = 1
    stagger          = "60s"
    health_check     = "checks"
    min_healthy_time = "20s"
    healthy_deadline = "3m"
  }

  group "edge" {
    network {
      mode = "host"

      port "http" {
        static = var.http_port
      }
      # Dynamic ports: Prometheus metrics of both daemons, and cedra-spoa's
      # delivery server for pages too big for an SPOE frame (bound to 127.0.0.1).
      port "spoa_metrics" {}
      port "agent_metrics" {}
      port "deliver" {}
    }

    # An edge node keeps trying in place: its traffic arrives here.
    restart {
      attempts = 10
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    # Creates the shared socket and route directories, owned by the daemons' user.
    task "init" {
      driver = "docker"
      user   = "root"

      lifecycle {
        hook    = "prestart"
        sidecar = false
      }

      config {
        image        = var.image
        network_mode = "host"
        command      = "/usr/bin/install"
        args = ["-d", "-m", "0750", "-o", "cedra", "-g", "cedra",
        "${NOMAD_ALLOC_DIR}/run", "${NOMAD_ALLOC_DIR}/routes"]
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }

    # cedra-spoa starts before HAProxy and stops after it (a prestart sidecar),
    # so that HAProxy's SPOE has its agent for its whole life, soft-stop included.
    task "cedra-spoa" {
      driver = "docker"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        image        = var.image
        network_mode = "host"
        command      = "cedra-spoa"
        args         = ["-f", "/local/cedra-spoa.conf"]
      }

      vault {
        policies    = ["cedra-edge"]
        change_mode = "restart"
      }

      # SIGTERM: stop accepting, finish in-flight NOTIFYs ("timeout drain"), exit 0.
      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      # Valkey password (secret/cedra/valkey); cedra-spoa reads it from the environment.
      template {
        destination = "secrets/spoa.env"
        env         = true
        change_mode = "restart"
        perms       = "0400"
        data        = <<-EOT
        {{- with secret "secret/data/cedra/valkey" }}
        CEDRA_VALKEY_PASSWORD={{ .Data.data.password }}
        {{- end }}
        EOT
      }

      # cedra-spoa(8). The Valkey address comes from Consul ("valkey|any": not
      # re-rendered when only its health changes); it is fixed at start, so a
      # new address restarts the task (HAProxy passes requests to the origin
      # meanwhile), spread over the nodes by the splay.
      template {
        destination = "local/cedra-spoa.conf"
        change_mode = "restart"
        splay       = "30s"
        data        = <<-EOT
        # Rendered by Nomad from nomad/cedra-edge.nomad: edit the job, not this file.
        listen unix:{{ env "NOMAD_ALLOC_DIR" }}/run/spoa.sock
        unix-mode 0600
        threads ${var.spoa_threads}
        max-frame-size 16380
        max-reassembly 256k
        max-inflight 1024
        timeout hello 5s
        timeout drain 5s
        log stderr
        log-level info
        message cedra-req
        stats-socket {{ env "NOMAD_ALLOC_DIR" }}/run/spoa-admin.sock mode 600
        metrics {{ env "NOMAD_IP_spoa_metrics" }}:{{ env "NOMAD_PORT_spoa_metrics" }}
        deliver 127.0.0.1:{{ env "NOMAD_PORT_deliver" }}
        # Edge HITs served from HAProxy's own cache, keyed by entry id.
        haproxy-cache on

        {{- with service "valkey|any" }}{{ with index . 0 }}
        valkey {{ .Address }}:{{ .Port }}
        valkey-timeout 50ms
        # Placeholder until cedra-agent's first reconcile (about a second):
        # it sends "set pool stable key-prefix storefront:<build>: routes
        # {{ env "NOMAD_ALLOC_DIR" }}/routes/<build>.table build <build>" for the
        # stable build it sees in Consul. Nothing is written under this prefix,
        # so meanwhile every page is a MISS and goes to the origin.
        pool stable key-prefix storefront:unset: routes pathname
        {{- end }}{{ end }}

        session-cookie ${var.session_cookie}
        locales fr nl en
        default-locale fr
        locale-cookie NEXT_LOCALE
        locale-redirect 307
        locale-exclude /_next/ /api/
        EOT
      }

      service {
        name = "cedra-spoa"
        port = "spoa_metrics"
        tags = ["prometheus", "cedra-edge"]

        meta {
          metrics_path = "/metrics"
        }

        check {
          name     = "spoa-metrics"
          type     = "http"
          path     = "/metrics"
          interval = "15s"
          timeout  = "3s"
        }
      }

      resources {
        cpu    = 1000
        memory = 256
      }
    }

    task "haproxy" {
      driver = "docker"
      # HAProxy gone for good = this edge is gone: stop the other tasks too.
      leader = true

      config {
        image        = var.image
        network_mode = "host"
        command      = "haproxy"
        args         = ["-db", "-f", "/usr/local/etc/cedra/haproxy/haproxy.cfg"]

        ulimit {
          nofile = "65536:65536"
        }
      }

      # haproxy/README.md, "Environment variables". The configuration files are
      # the ones of haproxy/ baked into the image with the binaries they were
      # tested with; everything node-specific comes from here.
      env {
        CEDRA_HTTP_BIND               = ":${NOMAD_PORT_http}"
        CEDRA_SPOA_ADDR               = "unix@${NOMAD_ALLOC_DIR}/run/spoa.sock"
        CEDRA_HAPROXY_SOCK            = "${NOMAD_ALLOC_DIR}/run/haproxy-admin.sock"
        # the canary relay's UNIX socket, in the allocation's own directory
        # (never an abstract name: with the host network every allocation on
        # the node would share it, and HAProxy 2.6 crashes reloading one)
        CEDRA_RELAY_ADDR              = "unix@${NOMAD_ALLOC_DIR}/run/relay.sock"
        # written by cedra-agent after each round: a restarted HAProxy keeps its slots
        CEDRA_SERVER_STATE_FILE       = "${NOMAD_ALLOC_DIR}/run/haproxy-servers.state"
        CEDRA_DELIVER_ADDR            = "127.0.0.1:${NOMAD_PORT_deliver}"
        CEDRA_CANARY_SLOTS            = var.canary_slots
        CEDRA_NBTHREAD                = var.haproxy_threads
        CEDRA_MAXCONN                 = "20000"
        CEDRA_HAPROXY_LOG             = "stderr"
        CEDRA_HAPROXY_LOG_LEVEL       = "info"
        CEDRA_SPOE_TIMEOUT_PROCESSING = "100ms"
        CEDRA_SPOE_MAX_FRAME_SIZE     = "16380"
      }

      # storefront_stable's first server until cedra-agent reconciles: a
      # passing stable instance from Consul (tag "storefront"; canaries carry
      # only "canary"). Never re-rendered into a restart: the agent owns the
      # servers from then on, through the Runtime API.
      template {
        destination = "local/origin.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
        {{- with service "storefront.storefront" }}{{ with index . 0 }}
        CEDRA_ORIGIN_ADDR={{ .Address }}:{{ .Port }}
        {{- end }}{{ end }}
        EOT
      }

      # Stop: Nomad deregisters cedra-edge from Consul, waits shutdown_delay
      # (the load balancer stops sending new clients), then SIGUSR1: HAProxy's
      # soft stop closes the listener and lets open connections finish, up to
      # haproxy.cfg's hard-stop-after 30s.
      shutdown_delay = "10s"
      kill_signal    = "SIGUSR1"
      kill_timeout   = "35s"

      service {
        name = "cedra-edge"
        port = "http"
        tags = ["edge", "http"]

        check {
          name     = "haproxy-tcp"
          type     = "tcp"
          interval = "5s"
          timeout  = "2s"

          check_restart {
            limit = 3
            grace = "30s"
          }
        }

        # End to end through this edge: HAProxy -> SPOE (/api/ is a BYPASS)
        # -> a storefront. It depends on the origin too, so it does not gate
        # the edge's own deployments (on_update = "ignore").
        check {
          name      = "edge-http"
          type      = "http"
          path      = "/api/health"
          interval  = "10s"
          timeout   = "3s"
          on_update = "ignore"
        }
      }

      resources {
        cpu    = 2000
        memory = 512
      }
    }

    task "cedra-agent" {
      driver = "docker"

      # The route tables are split out of the bundle before the agent starts
      # (and again on every change, change_script below).
      config {
        image        = var.image
        network_mode = "host"
        command      = "/bin/sh"
        args = ["-c",
        "cedra-routes-sync /local/routes.bundle && exec cedra-agent -f /local/cedra-agent.conf"]
      }

      vault {
        policies    = ["cedra-edge"]
        change_mode = "restart"
      }

      # Clean exit deregisters the agent from Consul.
      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      env {
        CONSUL_HTTP_ADDR = var.consul_http_addr
      }

      # Consul ACL token (secret/cedra/edge, key consul_token): service:read
      # storefront, node:read, service:write cedra-agent.
      template {
        destination = "secrets/agent.env"
        env         = true
        change_mode = "restart"
        perms       = "0400"
        data        = <<-EOT
        {{- with secret "secret/data/cedra/edge" }}
        CONSUL_HTTP_TOKEN={{ .Data.data.consul_token }}
        {{- end }}
        EOT
      }

      # cedra-agent(8). key-prefix must give what the storefront sets as
      # CACHE_KEY_PREFIX ("storefront:<build_id>:", nomad/cedra-storefront.nomad),
      # build-key and canary-tag what its service block registers.
      # ("%%{build}" is HCL's escape for the agent's own "%{build}".)
      template {
        destination   = "local/cedra-agent.conf"
        change_mode   = "signal"
        change_signal = "SIGHUP"
        data          = <<-EOT
        # Rendered by Nomad from nomad/cedra-edge.nomad: edit the job, not this file.
        service storefront
        backend stable storefront_stable slots stable
        backend canary storefront_canary slots canary
        canary-tag canary
        build-key build_id
        canary-weight-key canary_weight
        canary-weight ${var.canary_weight}

        haproxy-socket {{ env "NOMAD_ALLOC_DIR" }}/run/haproxy-admin.sock
        server-state-file {{ env "NOMAD_ALLOC_DIR" }}/run/haproxy-servers.state
        spoa-socket {{ env "NOMAD_ALLOC_DIR" }}/run/spoa-admin.sock
        key-prefix storefront:%%{build}:
        routes {{ env "NOMAD_ALLOC_DIR" }}/routes/%%{build}.table

        stats-socket {{ env "NOMAD_ALLOC_DIR" }}/run/agent-admin.sock mode 600
        metrics {{ env "NOMAD_IP_agent_metrics" }}:{{ env "NOMAD_PORT_agent_metrics" }}
        register cedra-agent id cedra-agent-{{ env "node.unique.name" }} address {{ env "NOMAD_IP_agent_metrics" }} port {{ env "NOMAD_PORT_agent_metrics" }} tags prometheus,cedra-edge meta metrics_path=/metrics ttl 10s deregister-after 1m
        log stderr
        log-level info
        EOT
      }

      # Every build's route table, from Consul KV cedra/routes/<build_id>
      # (nomad/deploy.sh writes it before it runs the storefront job, so the
      # table is here before the build's first instance registers).
      template {
        destination = "local/routes.bundle"
        change_mode = "script"

        change_script {
          command       = "/usr/local/bin/cedra-routes-sync"
          args          = ["/local/routes.bundle"]
          timeout       = "20s"
          fail_on_error = false
        }

        data = <<-EOT
        {{- range ls "cedra/routes" }}
        @@ cedra-routes build {{ .Key }}
        {{ .Value }}
        {{- end }}
        @@ cedra-routes end
        EOT
      }

      resources {
        cpu    = 200
        memory = 64
      }
    }
  }
}
