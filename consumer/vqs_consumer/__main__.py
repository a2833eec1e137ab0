import sys

from vqs_consumer.cli import main

sys.exit(main())
