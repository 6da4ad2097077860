from expertgate.cli import main

raise SystemExit(main())
