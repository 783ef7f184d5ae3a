from netstack.cli import main

raise SystemExit(main())
