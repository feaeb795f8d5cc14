from gpudispatch.cli import main

raise SystemExit(main())
