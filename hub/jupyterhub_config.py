# JupyterHub for a qkv class on one machine. Started by hub/start.py (`make hub`), which
# prepares the exchange and the course and points QKV_HUB_SETTINGS at STATE/hub.json.
#
# What runs: JupyterHub as root on the given address; configurable-http-proxy from npm
# (hub/node_modules, installed by `make hub-deps`); logins checked by PAM against the
# machine's own accounts; each account's JupyterLab started as that account by
# LocalProcessSpawner, from the course's packages (hub.bin), in the account's home folder.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from qkv_hub import PROXY, HubSettings, role, user_environment  # noqa: E402

c = get_config()  # noqa: F821  (injected by traitlets)
hub = HubSettings.load()
state = Path(hub.state)

c.JupyterHub.ip = hub.ip
c.JupyterHub.port = hub.port
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = hub.hub_port
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
c.ConfigurableHTTPProxy.command = [str(PROXY)]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
c.JupyterHub.cleanup_servers = True  # stopping the hub stops every learner's server

if hub.authenticator == "pam":
    c.JupyterHub.authenticator_class = "pam"
elif hub.authenticator == "test-dummy":
    # FOR LOOPBACK TESTS ONLY: any password is accepted for the allowed names. Never use it on a
    # hub anyone else can reach; start.py refuses it on any address but 127.0.0.1.
    c.JupyterHub.authenticator_class = "dummy"
else:
    raise SystemExit(f"unknown authenticator {hub.authenticator!r}: use pam")
c.Authenticator.admin_users = {hub.instructor}
c.Authenticator.allowed_users = {hub.instructor, *hub.learners}
if hub.learner_group:
    c.LocalAuthenticator.allowed_groups = {hub.learner_group}
c.LocalAuthenticator.create_system_users = False  # accounts are the machine's, made with useradd

c.JupyterHub.spawner_class = "jupyterhub.spawner.LocalProcessSpawner"
c.Spawner.cmd = [str(Path(hub.bin) / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
# A loaded class machine can take a while to import JupyterLab and nbgrader.
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120


def _environment(spawner):
    """Each user's environment depends on their role (instructor or learner)."""
    spawner.environment.update(user_environment(hub, spawner.user.name))
    spawner.log.info("qkv hub: starting %s's server as %s", spawner.user.name, role(hub, spawner.user.name))


c.Spawner.pre_spawn_hook = _environment
