"""What feeds the Pulsar topic: CI's notifications arrive in a TDMQ-CMQ queue (``queue.py``
moves them) or as HTTP POSTs (``url.py`` receives them); both produce through ``forward.py`` and
let go of a message only once the broker has persisted it.
"""
