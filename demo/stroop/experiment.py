"""Stroop colour naming: participants name the ink colour of colour words.

Each participant is a single node in an empty network; the trial list is made
on the client and responses are stored as infos.
"""

from dallinger.experiment import Experiment
from dallinger.networks import Empty


class Stroop(Experiment):
    """Congruent and incongruent colour-word trials, one participant per network."""

    def __init__(self, session=None):
        super().__init__(session)
        self.experiment_repeats = 1
        self.initial_recruitment_size = 1
        self.trials_per_participant = 24
        if session:
            self.setup()

    def create_network(self):
        return Empty(max_size=1)

    def info_post_request(self, node, info):
        """Accept every response; scoring happens in the analysis."""
        return None
