"""The WSGI entry point of a checkout: ``gunicorn --worker-class gevent wsgi:app`` (the README's
"Serving" section gives the options that ``runstream serve`` sets).

Installed, the same application is ``gunicorn 'runstream.server:create_app()'``, from any folder.
One process only, unless the hub spans processes: with the embedded SQLite store and the
in-process hub, readers in one worker would not hear appends made in another.
"""

from runstream.server import create_app

app = create_app()
