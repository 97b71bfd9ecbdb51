"""The stream core: where chunks are appended, stored, fanned out and followed.

- :mod:`.store`: the one place streams are created, appended to, read and deleted;
- :mod:`.hub`: how a commit reaches the readers of its stream;
- :mod:`.offsets`, :mod:`.content_types`, :mod:`.json_messages`: the stream's own rules;
- :mod:`.errors`: what the core refuses, by meaning.

The core imports nothing of the faces, the runs, the dashboard, Flask or ReactPy.
"""
