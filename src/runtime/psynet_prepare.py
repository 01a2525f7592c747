# PsyNet's preparation of a launch (psynet/command_line.py `_pre_launch` and
# `_prepare`, called through PsyNet's own functions), run by dallinger-oci in
# a one-off container of the experiment's image against the stack's
# postgresql and redis. What it writes to /experiment/.deploy (the deployment
# info with its secret, the pre-deploy constants, the database template)
# and the assets it deposits (~/psynet-data) land in volumes that web and
# workers share: none of it is in the image.
import os
import sys

MODE = sys.argv[1]
# The experiment's git origin as dallinger-oci read it on the host (the
# image need not have git, and has no repository).
ORIGIN = sys.argv[2] or None

# The image is the deployment package PsyNet's web and workers run in
# (psynet's extra_files() puts DEPLOYMENT_PACKAGE there); this container
# prepares it, as PsyNet's launch does outside the package. Only this
# container's own copy is removed.
if os.path.exists("DEPLOYMENT_PACKAGE"):
    os.remove("DEPLOYMENT_PACKAGE")
# As in web and workers (console scripts): the experiment directory is not
# on sys.path, Dallinger imports it as the `dallinger_experiment` package.
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]

from psynet import deployment_info  # noqa: E402
from psynet.command_line import _prepare  # noqa: E402
from psynet.experiment import get_experiment  # noqa: E402
from dallinger.config import get_config  # noqa: E402

deployment_info.find_git_repo = lambda: ORIGIN

deployment_info.init(
    redeploying_from_archive=False,
    mode=MODE,
    # Web and workers share this container's file system where PsyNet
    # writes (the .deploy and psynet-data volumes): a local deployment, so
    # assets are deposited into the shared storage.
    is_local_deployment=True,
    is_ssh_deployment=False,
    server=None,
    app=None,
)
get_experiment().update_deployment_id()
config = get_config()
if not config.ready:
    config.load()
deployment_info.write(locale=config.get("locale", "en"))
_prepare()
print("dallinger-oci: PsyNet prepared", flush=True)
