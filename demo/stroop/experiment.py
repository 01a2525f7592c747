"""Stroop colour naming: participants name the ink colour of colour words.

Each participant is a single node in an empty network; the trial list is made
on the client and responses are stored as infos.
"""

from dallinger.config import get_config
from dallinger.experiment import Experiment
from dallinger.networks import Empty


class Stroop(Experiment):
    """Congruent and incongruent colour-word trials, one participant per network."""

    experiment_repeats = 1
    initial_recruitment_size = 1

    # Dallinger 12 constructs experiments with no_configure (its server
    # checks protected routes with one before /launch).
    def __init__(self, no_configure=False):
        super().__init__(no_configure=no_configure)
        self.trials_per_participant = 24

    @classmethod
    def extra_parameters(cls):
        # config.txt sets it; Dallinger refuses keys nobody registered.
        get_config().register("num_participants", int)

    def create_network(self):
        return Empty(max_size=1)

    def info_post_request(self, node, info):
        """Accept every response; scoring happens in the analysis."""
        return None
