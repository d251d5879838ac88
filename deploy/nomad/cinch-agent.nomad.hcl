# One Cinch agent per sandbox client node (a system job): that node's warm pools, driving
# its own dockerd + runsc through the socket. Images: loaded on every node beforehand
# (`docker save | docker load`, as deploy/swarm/deploy does), so nothing is pulled.
# The client needs `plugin "docker" { config { volumes { enabled = true } } }` for the
# socket bind, and node meta cinch_sandbox = "true". Firewall port 8081 to the API nodes.
variable "image" {
  type    = string
  default = "cinch/runtime:REPLACE-ME"
}

job "cinch-agent" {
  type        = "system"
  datacenters = ["*"]

  constraint {
    attribute = "${meta.cinch_sandbox}"
    value     = "true"
  }

  update {
    max_parallel = 1
    stagger      = "10s"
  }

  group "agent" {
    network {
      mode = "host"
      port "agent" {
        static = 8081
      }
    }

    service {
      name     = "cinch-agent"
      port     = "agent"
      provider = "consul"

      check {
        type     = "http"
        path     = "/readyz"
        interval = "2s"
        timeout  = "1s"
      }
    }

    task "agent" {
      driver       = "docker"
      kill_timeout = "20s"
      kill_signal  = "SIGTERM"

      config {
        image        = var.image
        force_pull   = false
        network_mode = "host"
        args         = ["agent"]
        volumes = [
          "/var/run/docker.sock:/var/run/docker.sock",
          "/var/lib/cinch-agent:/var/lib/cinch-agent",
          "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        ]
      }

      template {
        destination = "secrets/agent.env"
        env         = true
        data        = <<-EOT
          CINCH_AGENT_TOKEN={{ with nomadVar "nomad/jobs/cinch-agent" }}{{ .agent_token }}{{ end }}
        EOT
      }

      env {
        CINCH_HOST            = "${NOMAD_IP_agent}"
        CINCH_PORT            = "${NOMAD_PORT_agent}"
        CINCH_DATA_DIR        = "/var/lib/cinch-agent"
        CINCH_POOL_PYTHON     = "2"
        CINCH_POOL_JAVASCRIPT = "2"
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }
}
