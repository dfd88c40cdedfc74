"""Named sandboxes, without a daemon: `rbox run [-d] --name`, `ps`, `exec`, `stop`, `stats`, `logs`.

Runs in: parent (the caller's rbox, and the supervisor: the rbox that stays stage-1's
parent for the sandbox's whole life, in the background with -d).

- registry.py: one locked directory per name in rbox's runtime state (what lives, what ended)
- supervisor.py: what parent.run does more for a named sandbox (detach, the exec socket,
  the log, stop requests)
- logfile.py: the detached command's output, capped and rotated; `rbox logs`
- join.py: `rbox exec`, entering the sandbox's namespaces (docs/internals.md says why this way)
- stats.py: `rbox stats`, from the sandbox's cgroup or summed over its processes
- commands.py: `rbox ps`, `stop`, `logs`, `stats`, `exec`: the command line
- systemd.py: a scope of its own under a user manager, and whether logout ends it

Nothing here is imported by `rbox run` without --name (bench/startup.py's path stays lean).
"""
