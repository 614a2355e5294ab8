"""A Commissaire-style, class-based MyService, run under a ServiceManager of 3 processes.

It is the example of Commissaire's "Writing a Commissaire Service"; only the import
differs: ``commissaire_service.service`` -> ``busapp.service``.

Run it:   python examples/classic_service.py [BROKER_URL]
          (no URL: $BUSAPP_BROKER_URL, else the embedded broker)
Call it:  busapp call queues.my_queue.ping --exchange my_exchange
"""

from __future__ import annotations

import sys

from busapp.service import CommissaireService, ServiceManager


class MyService(CommissaireService):
    """
    This is MyService.
    """

    def on_ping(self, message):
        """
        Exposed as ping. Takes no bus arguments.
        """
        return 'pong'

    def on_echo(self, message, words):
        """
        Exposed as echo. Takes one bus argument of words.
        """
        return words

    def on_fail(self, message):
        """
        Exposed as fail. Takes no bus arguments.
        """
        raise NotImplementedError('I was never created')


#: The arguments used to create new kombu.Queue instances
queue_kwargs = [
    {'name': 'my_queue', 'routing_key': 'queues.my_queue.*'},
]


def main(connection_url=None):
    try:
        ServiceManager(
            service_class=MyService,
            process_count=3,
            exchange_name='my_exchange',
            connection_url=connection_url,
            qkwargs=queue_kwargs
        ).run()
    except Exception as error:
        # Handle it ;-)
        print(f"MyService stopped: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
