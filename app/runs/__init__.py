"""Runs of tasks (:mod:`.runs`), the streams each run owns (:mod:`.run_streams`), and who may
read or write them (:mod:`.auth`). Built on the stream core; used by the faces."""
