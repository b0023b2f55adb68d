from rlreason.cli import main

raise SystemExit(main())
