# Stateless Cinch API replicas (a service job). Agents are found through Consul DNS
# (cinch-agent.service.consul: one record per healthy agent); the database is the
# operator's PostgreSQL, its URL and the agent token in Nomad variables.
variable "image" {
  type    = string
  default = "cinch/runtime:REPLACE-ME"
}

job "cinch-api" {
  type        = "service"
  datacenters = ["*"]

  # Not on the sandbox nodes: the tier with the database credentials stays apart.
  constraint {
    attribute = "${meta.cinch_sandbox}"
    operator  = "!="
    value     = "true"
  }

  update {
    max_parallel     = 1
    min_healthy_time = "5s"
    healthy_deadline = "2m"
    auto_revert      = true
  }

  group "api" {
    count = 2

    spread {
      attribute = "${node.unique.id}"
    }

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "cinch-api"
      port     = "http"
      provider = "consul"

      check {
        type     = "http"
        path     = "/readyz"
        interval = "2s"
        timeout  = "1s"
      }
    }

    task "api" {
      driver       = "docker"
      kill_timeout = "20s"

      config {
        image      = var.image
        force_pull = false
        ports      = ["http"]
        args       = ["api"]
      }

      template {
        destination = "secrets/api.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/cinch-api" }}
          CINCH_AGENT_TOKEN={{ .agent_token }}
          CINCH_DATABASE_URL={{ .database_url }}
          {{ end }}
        EOT
      }

      env {
        CINCH_HOST       = "0.0.0.0"
        CINCH_PORT       = "8080"
        CINCH_DATA_DIR   = "/local/cinch-api"
        CINCH_AGENTS_DNS = "cinch-agent.service.consul:8081"
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
