"""The tools around the library: the ``atomic-cache`` CLI, the demo, the bench, the
doctor, the seed data and the embedded servers. The library never imports them."""
