"""Stem (Dart) deployments on Redis: the key layout (``keys``), lenient parsers and Dart-exact
serializers of what Stem writes (``wire``), a simulator that writes it as Stem workers do
(``simulator``), and the watcher that turns it back into signals (``watcher``)."""
