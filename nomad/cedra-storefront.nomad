# cedra-storefront: the Next.js storefront behind the cedra edge.
#
#   nomad job run -var build_id=<id> -var image=<repo>:<id> nomad/cedra-storefront.nomad
#
# nomad/deploy.sh builds the image, publishes the build's route table for the
# edge and runs this job; see nomad/README.md.
#
# Canary flow (docs/operations.md, "Canary: promote and roll back"):
#   - a new build_id starts ONE canary allocation (update.canary = 1); Consul
#     lists it with the tag "canary" only (canary_tags) and Meta build_id;
#   - cedra-agent (edge) fills a storefront_canary slot with it and tells
#     cedra-spoa "set pool canary key-prefix storefront:<build_id>: ...";
#   - the deployment waits until the canary's /api/health check has passed for
#     60 s (min_healthy_time); promotion is manual (nomad deployment promote,
#     or deploy.sh --auto-promote); promotion flips the tags in place, the
#     instance moves to the stable pool without a restart;
#   - unhealthy canary: the deployment fails and auto_revert registers the
#     previous job version again (the canary is stopped, the edge drains it).
#
# Runtime contracts kept here (DESIGN 3.2, 3.3):
#   CACHE_KEY_PREFIX = "storefront:<build_id>:"  <->  cedra-agent
#     "key-prefix storefront:%{build}:" (nomad/cedra-edge.nomad): every build
#     has its own keys, so an edge pool never serves a page of another build.
#   service Meta build_id                         <->  cedra-agent "build-key build_id"
#   canary_tags ["canary"]                        <->  cedra-agent "canary-tag canary"

variable "build_id" {
  type        = string
  description = "Next.js build id (next.config generateBuildId reads BUILD_ID); also the image tag, the Consul Meta build_id and part of the cache key prefix."

  validation {
    # cedra-spoa carries the build id in the cedra_pool cookie: a token of
    # letters, digits, '-' and '_' (spoa/conf.c).
    condition     = can(regex("^[A-Za-z0-9_-]{1,63}$", var.build_id))
    error_message = "The build_id must be 1-63 characters of A-Z a-z 0-9 - _."
  }
}

variable "image" {
  type        = string
  description = "The storefront image built by nomad/deploy.sh (nomad/storefront.Dockerfile), e.g. registry.example.internal/cedra/storefront:<build_id>."
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "instances" {
  type        = number
  default     = 3
  description = "Storefront instances (the canary is one more while a deployment runs)."
}

variable "canary_weight" {
  type        = number
  default     = 10
  description = "Percent of new users the edge pins to a live canary (service Meta canary_weight, read by cedra-agent)."
}

locals {
  # One key space per build in the shared Valkey (see the header).
  cache_key_prefix = "storefront:${var.build_id}:"
}

job "cedra-storefront" {
  type        = "service"
  datacenters = var.datacenters

  # A new build: one canary next to the running version, promoted by hand
  # (or by deploy.sh --auto-promote) once it has been healthy for 60 s;
  # rolled back automatically when it is not.
  update {
    canary            = 1
    max_parallel      = 1
    auto_promote      = false
    auto_revert       = true
    health_check      = "checks"
    min_healthy_time  = "60s"
    # Time for one allocation to become healthy: image pull + Next.js start
    # (~1 s) + the 60 s above, with room for a slow pull.
    healthy_deadline  = "5m"
    # The whole deployment must make progress within this (> healthy_deadline).
    progress_deadline = "15m"
    stagger           = "30s"
  }

  # Node drains move allocations one at a time, each healthy before the next.
  migrate {
    max_parallel     = 1
    health_check     = "checks"
    min_healthy_time = "30s"
    healthy_deadline = "5m"
  }

  group "storefront" {
    count = var.instances

    # Spread the instances over nodes so that one node loss is one instance.
    spread {
      attribute = "${node.unique.id}"
    }

    network {
      port "http" {
        to = 3000
      }
    }

    # Restart in place a few times (a crash, an OOM), then let the scheduler
    # place the allocation elsewhere.
    restart {
      attempts = 3
      interval = "5m"
      delay    = "15s"
      mode     = "fail"
    }

    reschedule {
      delay          = "30s"
      delay_function = "exponential"
      max_delay      = "10m"
      unlimited      = true
    }

    service {
      name = "storefront"
      port = "http"
      # Stable instances. A canary is registered with canary_tags INSTEAD of
      # these (Nomad replaces the list) and gets "tags" at promotion, in place:
      # cedra-agent moves it from storefront_canary to storefront_stable
      # without dropping a connection (DESIGN 3.3).
      tags        = ["storefront", "http"]
      canary_tags = ["canary"]

      meta {
        build_id         = var.build_id
        canary_weight    = var.canary_weight
        cache_key_prefix = local.cache_key_prefix
      }

      check {
        name     = "storefront-health"
        type     = "http"
        path     = "/api/health"
        interval = "10s"
        timeout  = "2s"

        # A storefront that stops answering is restarted after 3 failures,
        # not before it had 60 s to start.
        check_restart {
          limit           = 3
          grace           = "60s"
          ignore_warnings = false
        }
      }
    }

    task "next" {
      driver = "docker"

      config {
        image = var.image
        ports = ["http"]
        init  = true
      }

      # Draining: on stop Nomad deregisters the service from Consul first, waits
      # shutdown_delay, then sends kill_signal. cedra-agent sees the instance
      # leave (blocking query) and drains its HAProxy slot well within these
      # 15 s; Next.js then finishes in-flight requests on SIGTERM.
      shutdown_delay = "15s"
      kill_signal    = "SIGTERM"
      kill_timeout   = "30s"

      # Nomad 1.6: a Vault token with this policy (see nomad/README.md).
      # Nomad >= 1.7 with workload identities: replace by role = "cedra-storefront".
      vault {
        policies    = ["cedra-storefront"]
        change_mode = "restart"
      }

      env {
        NODE_ENV                = "production"
        NEXT_TELEMETRY_DISABLED = "1"
        PORT                    = "3000"
        HOSTNAME                = "0.0.0.0"
        BUILD_ID                = var.build_id
        CACHE_KEY_PREFIX        = local.cache_key_prefix
      }

      # Secrets of the storefront (KV v2 mounted at "secret/", logical path
      # secret/cedra/prod):
      #   vault kv put secret/cedra/prod revalidate_secret=$(openssl rand -hex 32) \
      #                                  session_secret=$(openssl rand -hex 32)
      # Values go into an env file unquoted: keep them to [A-Za-z0-9_-] (hex).
      template {
        destination = "secrets/storefront.env"
        env         = true
        change_mode = "restart"
        splay       = "30s"
        perms       = "0400"
        data        = <<-EOT
        {{- with secret "secret/data/cedra/prod" }}
        REVALIDATE_SECRET={{ .Data.data.revalidate_secret }}
        SESSION_SECRET={{ .Data.data.session_secret }}
        {{- end }}
        EOT
      }

      # The cache handler's Valkey (REDIS_URL) from Consul's catalog, with the
      # password from Vault (secret/cedra/valkey, key "password", hex).
      # "valkey|any": the address does not depend on the check state, so a
      # Valkey restart (its check is critical while it loads its AOF) does not
      # re-render this file and restart every storefront; the handler
      # reconnects by itself. Deploy nomad/valkey.nomad first: with no valkey
      # instance in the catalog REDIS_URL stays unset.
      template {
        destination = "secrets/valkey.env"
        env         = true
        change_mode = "restart"
        splay       = "60s"
        perms       = "0400"
        data        = <<-EOT
        {{- with secret "secret/data/cedra/valkey" }}{{ $pw := .Data.data.password }}
        {{- with service "valkey|any" }}{{ with index . 0 }}
        REDIS_URL=redis://:{{ $pw | urlquery }}@{{ .Address }}:{{ .Port }}
        {{- end }}{{ end }}
        {{- end }}
        EOT
      }

      resources {
        cpu        = 1000
        memory     = 1024
        # Needs memory oversubscription enabled on the cluster; ignored otherwise.
        memory_max = 1536
      }

      logs {
        max_files     = 5
        max_file_size = 20
      }
    }
  }
}
