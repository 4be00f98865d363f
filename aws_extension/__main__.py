from aws_extension.cli import main

raise SystemExit(main())
