"""The dashboard's CSS and script, shipped as package data of ``runstream.static`` and served
at ``/static`` by the server (:mod:`runstream.server.dashboard`)."""
