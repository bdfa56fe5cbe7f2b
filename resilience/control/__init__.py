"""Control plane: SSH to hosts, Ansible playbooks."""
